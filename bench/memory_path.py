"""progressq's own cost per event on the memory backend, in one process, without sockets.

The end-to-end scenario's tasks (``E2E_REPORTS`` reports each, 64 at once, one connection
per owner) run against connections whose ASGI ``send`` does nothing, beside the
hand-written port's loop (``json.dumps`` of the same view, the same no-op ``send``):
what is left is what progressq does per event beyond what a port does, without the
WebSocket write that both pay. Repeatable enough to measure one change at a time
(CPU time of this process, uvloop, median of ``--rounds``).

    bench/.venv/bin/python bench/memory_path.py [--tasks 200] [--rounds 5] [--profile FILE]

With ``--interval S`` progressq runs with ``progress_interval=S`` instead of 0: reports that
come faster are merged and flushed once an interval, so fewer events go out; the CPU is then
also given per report (the port's events, one a report, are its reports).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import statistics
import time
from typing import Any

import uvloop
from _common import SECRET
from e2e_servers import CONCURRENCY, REPORTS, frame, new_task, run_task

from progressq import Hub, MemoryBackend, TaskContext
from progressq.transport import RequestInfo, TransportSettings
from progressq.transport._adapters import AsgiWebSocketPeer
from progressq.transport._connection import Connection
from progressq.transport._identity import IdentityResolver


class Counter:
    def __init__(self) -> None:
        self.sent = 0
        self.ends = 0
        self.done = asyncio.Event()
        self.expected = 0

    async def send(self, message: dict[str, Any]) -> None:  # an ASGI send that costs nothing
        self.sent += 1
        if '"completed"' in message.get("text", ""):
            self.ends += 1
            if self.ends == self.expected:
                self.done.set()


async def progressq_round(tasks: int, interval: float = 0.0) -> tuple[float, int]:
    hub = Hub(MemoryBackend(), secret=SECRET, concurrency=CONCURRENCY, progress_interval=interval)

    @hub.task("e2e", timeout=600)
    async def e2e(ctx: TaskContext) -> None:
        for i in range(REPORTS):
            await ctx.report((i + 1) * 100 / REPORTS, f"r{i}")
            await asyncio.sleep(0)

    counter = Counter()
    counter.expected = tasks
    settings = TransportSettings()
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "websocket.disconnect"}

    async with hub:
        resolver = IdentityResolver(hub.identities, None)
        runs = []
        for i in range(tasks):
            peer = AsgiWebSocketPeer(receive, counter.send)
            connection = Connection(hub, settings, resolver, peer, RequestInfo({}), f"s{i}")
            runs.append(asyncio.create_task(connection.run(f"u{i}")))
        await asyncio.sleep(0.1)
        counter.sent = 0
        cpu0 = time.process_time()
        for i in range(tasks):
            await hub.submit("e2e", owner=f"u{i}", name="e2e", payload={})
        await counter.done.wait()
        cpu = time.process_time() - cpu0
        events = counter.sent
        gone.set()
        await asyncio.gather(*runs, return_exceptions=True)
    return cpu, events


async def port_round(tasks: int) -> tuple[float, int]:
    counter = Counter()
    counter.expected = tasks
    sends = {f"u{i}": counter.send for i in range(tasks)}
    jobs: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    async def emit(user: str, event: dict[str, Any]) -> None:
        await sends[user]({"type": "websocket.send", "text": json.dumps(event)})

    async def worker() -> None:
        while True:
            task_id, user, created = await jobs.get()
            await run_task(task_id, user, created, emit)

    workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
    cpu0 = time.process_time()
    for i in range(tasks):
        task_id, created = new_task()
        await emit(f"u{i}", frame(task_id, "queued", 0.0, "", created))
        jobs.put_nowait((task_id, f"u{i}", created))
    await counter.done.wait()
    cpu = time.process_time() - cpu0
    for w in workers:
        w.cancel()
    return cpu, counter.sent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", default="", help="write progressq's rounds' cProfile stats here")
    p.add_argument("--only", default="port,progressq")
    p.add_argument("--interval", type=float, default=0.0, help="progressq's progress_interval (default 0)")
    args = p.parse_args()
    results: dict[str, list[float]] = {}
    per_report: dict[str, list[float]] = {}
    for name in args.only.split(","):
        for _ in range(args.rounds):
            profiler = cProfile.Profile() if args.profile and name == "progressq" else None
            if profiler is not None:
                profiler.enable()
            if name == "progressq":
                cpu, events = uvloop.run(progressq_round(args.tasks, args.interval))
            else:
                cpu, events = uvloop.run(port_round(args.tasks))
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            results.setdefault(name, []).append(cpu / events * 1e6)
            per_report.setdefault(name, []).append(cpu / (args.tasks * (REPORTS + 3)) * 1e6)
    for name, values in results.items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:10} {statistics.median(values):6.2f} us CPU per event, min {min(values):.2f} (rounds: {rounds})")
    if args.interval:
        for name, values in per_report.items():
            rounds = ", ".join(f"{v:.2f}" for v in values)
            print(f"{name:10} {statistics.median(values):6.2f} us CPU per report (rounds: {rounds})")
    if "port" in results and "progressq" in results:
        compared = per_report if args.interval else results  # with merging, per report: the same work asked
        ratio = statistics.median(compared["progressq"]) / statistics.median(compared["port"])
        print(f"progressq / port{' per report' if args.interval else ''}: {ratio:.2f}")


if __name__ == "__main__":
    main()
