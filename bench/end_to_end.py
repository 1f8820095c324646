"""Scenario: end to end, a browser's whole path. Clients start tasks over HTTP; tasks report.

200 WebSocket clients (40 with --quick), one task each, started by the client's own HTTP
POST; every task sends its owner queued, running, 200 progress reports (50 with --quick)
with only a cooperative yield between them, and completed; 64 tasks run at once. One
server process (uvicorn, uvloop, httptools), plus a worker process for the systems marked
"worker apart". Systems (see ``e2e_servers.py``): the hand-written port in one process and
over Redis, python-socketio with rooms and with its Redis manager, progressq on memory and
on Redis (worker in the web process, and in its own process).

Measured from the first start to the last terminal event: the server processes' CPU
(``/proc/<pid>/stat``) per event delivered, Redis's own CPU per event (``INFO cpu`` deltas)
and events per second. Every client's frames are checked afterwards: its own task only,
every report in order, one terminal event, last; progressq's ``seq`` without gaps.
By default a private ``redis-server`` on a free port serves the Redis systems (so that
Redis's CPU is this scenario's alone); ``--shared-redis`` uses 127.0.0.1:6379 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from _common import (
    BENCH,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    cpu_seconds,
    fmt,
    free_port,
    median,
    parser,
    private_redis,
    raise_file_limit,
    redis_cpu,
    selected,
    spread,
    table,
    wait_for_port,
    write_results,
)
from websockets.asyncio.client import ClientConnection, connect

# name: (server system, worker in its own process)
SYSTEMS: dict[str, tuple[str, bool]] = {
    "port": ("port", False),
    "port-redis": ("port-redis", False),
    "port-redis-apart": ("port-redis", True),
    "socketio": ("socketio", False),
    "socketio-redis": ("socketio-redis", False),
    "progressq": ("progressq", False),
    "progressq-redis": ("progressq-redis", False),
    "progressq-redis-apart": ("progressq-redis", True),
}
HEADER = ["system", "server CPU us/event", "spread", "/ port", "/ port over Redis", "+ in Redis us/event", "events/s"]
HEADER.append("check")
LABELS = {
    "port": "hand-written port, one process",
    "port-redis": "hand-written port over Redis, worker in the web process",
    "port-redis-apart": "hand-written port over Redis, worker apart",
    "socketio": "python-socketio, rooms",
    "socketio-redis": "python-socketio, AsyncRedisManager",
    "progressq": "progressq, memory backend",
    "progressq-redis": "progressq, Redis, worker in the web process",
    "progressq-redis-apart": "progressq, Redis, worker apart",
}
TERMINAL = ('"completed"', '"failed"', '"cancelled"')  # a status (with or without a space after the colon)


class Client:
    """One browser: its WebSocket, the task it started, every frame it received."""

    def __init__(self, system: str, user: str, connection: ClientConnection) -> None:
        self.system, self.user, self.connection = system, user, connection
        self.task_id = ""
        self.frames: list[str] = []
        self.done = asyncio.Event()

    async def read(self) -> None:
        socketio = self.system.startswith("socketio")
        with contextlib.suppress(Exception):
            async for message in self.connection:
                text = message if isinstance(message, str) else message.decode()
                if socketio:
                    if text == "2":
                        await self.connection.send("3")
                        continue
                    if not text.startswith("42"):
                        continue
                self.frames.append(text)
                if any(mark in text for mark in TERMINAL):
                    self.done.set()


async def open_client(system: str, port: int, user: str) -> Client:
    if system.startswith("socketio"):
        url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&user={user}"
    else:
        url = f"ws://127.0.0.1:{port}/ws?user={user}"
    connection = await connect(url, compression=None, ping_interval=None, max_queue=None, open_timeout=60)
    if system.startswith("socketio"):
        await connection.recv()  # engine.io open
        await connection.send("40")
        while not str(await connection.recv()).startswith("40"):
            pass
    elif system.startswith("progressq"):
        await connection.recv()  # connection
        await connection.recv()  # snapshot
    return Client(system, user, connection)


async def start(http: httpx.AsyncClient, system: str, port: int, client: Client) -> None:
    if system.startswith("progressq"):
        answer = await http.post(f"http://127.0.0.1:{port}/api/tasks/e2e", params={"user": client.user}, json={})
    else:
        answer = await http.post(f"http://127.0.0.1:{port}/start", params={"user": client.user})
    answer.raise_for_status()
    client.task_id = answer.json()["id"]


def check(client: Client, reports: int) -> str | None:
    """What is wrong with what ``client`` received; None when nothing is."""
    events: list[dict[str, Any]] = []
    for text in client.frames:
        if text.startswith("42"):
            events.append(json.loads(text[2:])[1])
        else:
            message = json.loads(text)
            if message["type"] in ("taskQueued", "taskProgress"):
                events.append(message)
    foreign = [e["task"]["id"] for e in events if e["task"]["id"] != client.task_id]
    if foreign:
        return f"{client.user}: {len(foreign)} events of other tasks"
    said = [e["task"]["message"] for e in events if e["task"]["status"] == "running"]
    if said[:1] != ["started"]:
        return f"{client.user}: the first running event says {said[:1]}, not 'started'"
    said = said[1:]
    if said != [f"r{i}" for i in range(reports)]:
        return f"{client.user}: reports {said[:3]}...{said[-3:]} ({len(said)}), not r0..r{reports - 1} in order"
    terminal = [i for i, e in enumerate(events) if e["task"]["status"] in ("completed", "failed", "cancelled")]
    if terminal != [len(events) - 1] or events[-1]["task"]["status"] != "completed":
        return f"{client.user}: terminal events at {terminal} of {len(events)}"
    if len(events) != reports + 3:
        return f"{client.user}: {len(events)} events, expected {reports + 3}"
    seqs = [e["seq"] for e in events if "seq" in e]
    if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        return f"{client.user}: seq with gaps or out of order: {seqs[:5]}..."
    return None


def system_seconds(pid: int) -> float:
    """The kernel's share of a process's CPU time (``stime``): the socket writes and wake-ups."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


async def measure(
    system: str, port: int, pids: list[int], redis_port: int | None, users: int, reports: int
) -> dict[str, Any]:
    names = [f"u{i}" for i in range(users)]
    clients: list[Client] = []
    for first in range(0, users, 50):
        clients += await asyncio.gather(*(open_client(system, port, n) for n in names[first : first + 50]))
    readers = [asyncio.create_task(c.read()) for c in clients]
    await asyncio.sleep(0.3)  # let the server settle after the handshakes
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        redis0 = redis_cpu(redis_port) if redis_port else 0.0
        web0 = cpu_seconds(pids[0])
        cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.perf_counter()
        kernel0 = sum(system_seconds(p) for p in pids)
        await asyncio.gather(*(start(http, system, port, c) for c in clients))
        finished = await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in clients)), 600)
        t1, cpu1 = time.perf_counter(), sum(cpu_seconds(p) for p in pids)
        web1 = cpu_seconds(pids[0])
        kernel1 = sum(system_seconds(p) for p in pids)
        redis1 = redis_cpu(redis_port) if redis_port else 0.0
    del finished
    await asyncio.sleep(0.2)  # anything sent after the terminal event would show in the check
    for c in clients:
        await c.connection.close()
    for reader in readers:
        reader.cancel()
    problems = [p for p in (check(c, reports) for c in clients) if p]
    events = sum(len(c.frames) for c in clients)
    return {
        "events": events,
        "seconds": t1 - t0,
        "events_per_s": events / (t1 - t0),
        "server_cpu_us_per_event": (cpu1 - cpu0) / events * 1e6,
        "web_cpu_us_per_event": (web1 - web0) / events * 1e6,  # the web process alone
        "redis_cpu_us_per_event": (redis1 - redis0) / events * 1e6 if redis_port else float("nan"),
        "server_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "server_kernel_us_per_event": (kernel1 - kernel0) / events * 1e6,
        "problems": len(problems),
        "first_problems": problems[:3],
    }


@contextlib.contextmanager
def process(args: list[str], port: int | None) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, str(BENCH / "e2e_servers.py"), *args], cwd=BENCH.parent)
    try:
        if port is not None:
            wait_for_port(port, child)
        yield child
    finally:
        child.send_signal(signal.SIGINT)  # as Ctrl-C: a profiled server writes its stats
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def one_round(name: str, redis_port: int, users: int, reports: int) -> dict[str, Any]:
    system, apart = SYSTEMS[name]
    redis = system.endswith("-redis")
    common = ["--redis-url", f"redis://{REDIS_HOST}:{redis_port}/{REDIS_DB}", "--prefix", f"e2e-{uuid.uuid4().hex[:8]}"]
    port = free_port()
    with contextlib.ExitStack() as stack:
        apart_flag = ["--worker-apart"] if apart else []
        web = stack.enter_context(process([system, "--port", str(port), *common, *apart_flag], port))
        pids = [web.pid]
        if apart:
            pids.append(stack.enter_context(process([system, "--worker", *common], None)).pid)
            time.sleep(1.0)  # the worker connects
        return asyncio.run(measure(system, port, pids, redis_port if redis else None, users, reports))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--users", type=int, default=0, help="clients, one task each (default 200, quick 40)")
    p.add_argument("--reports", type=int, default=0, help="reports per task (default 200, quick 50)")
    p.add_argument("--shared-redis", action="store_true", help="use the shared Redis, not a private redis-server")
    args = p.parse_args()
    raise_file_limit()
    rounds = args.rounds or (1 if args.quick else 3)
    users = args.users or (40 if args.quick else 200)
    reports = args.reports or (50 if args.quick else 200)
    os.environ["E2E_REPORTS"] = str(reports)
    names = selected(args.only, list(SYSTEMS))
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    shared = args.shared_redis or shutil.which("redis-server") is None
    with contextlib.ExitStack() as stack:
        redis_port = REDIS_PORT if shared else stack.enter_context(private_redis())
        for round_index in range(rounds):
            for name in names:
                outcome = one_round(name, redis_port, users, reports)
                runs[name].append(outcome)
                print(
                    f"  round {round_index + 1}: {name:22} {fmt(outcome['events_per_s'])} events/s, "
                    f"server {fmt(outcome['server_cpu_us_per_event'])} us CPU each "
                    f"({fmt(outcome['server_kernel_us_per_event'])} in the kernel, "
                    f"{fmt(outcome['web_cpu_us_per_event'])} in the web process) "
                    f"(+{fmt(outcome['redis_cpu_us_per_event'])} in Redis), "
                    f"{outcome['problems']} clients with problems {outcome['first_problems'][:1]}",
                    flush=True,
                )
    cpu = {n: median([r["server_cpu_us_per_event"] for r in runs[n]]) for n in names}
    inside = {n: median([r["redis_cpu_us_per_event"] for r in runs[n]]) for n in names}
    rate = {n: median([r["events_per_s"] for r in runs[n]]) for n in names}
    base, base_redis = cpu.get("port", float("nan")), cpu.get("port-redis", float("nan"))
    rows = [
        [
            LABELS[n],
            fmt(cpu[n]),
            f"{spread([r['server_cpu_us_per_event'] for r in runs[n]]) * 100:.0f}%",
            fmt(cpu[n] / base, 2),
            fmt(cpu[n] / base_redis, 2),
            fmt(inside[n]),
            fmt(rate[n]),
            "ok" if all(r["problems"] == 0 for r in runs[n]) else "FAILED",
        ]
        for n in names
    ]
    table(
        f"End to end: {users} clients, one task each, {reports} reports per task, 64 at once (median of {rounds})",
        HEADER,
        rows,
    )
    write_results(
        "end_to_end",
        {
            "users": users,
            "reports": reports,
            "rounds": rounds,
            "private_redis": not shared,
            "labels": {n: LABELS[n] for n in names},
            "runs": runs,
            "median_server_cpu_us_per_event": cpu,
            "median_redis_cpu_us_per_event": inside,
            "median_events_per_s": rate,
        },
    )
    if any(r["problems"] for n in names for r in runs[n]):
        sys.exit("end_to_end: a correctness check failed (see above)")


if __name__ == "__main__":
    main()
