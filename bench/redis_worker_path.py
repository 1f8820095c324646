"""progressq's worker side on Redis, in instructions: what the worker and the submits send.

``--tasks`` tasks (``--concurrency`` at once, one owner each) are submitted through a Hub on
Redis, ``--lanes`` submits at a time; each reports ``--reports`` times with only a cooperative
yield in between, so a task makes ``reports + 3`` events (queued, running, the reports,
completed), each a script call. No client listens: what is measured is the worker's commits and
the submits, not delivery. ``--reports 0 --lanes 64 --concurrency 32`` is the queue scenario's
no-op task, its whole life (submit, take, ``running``, ``completed`` with the acknowledgement).

One run prints the events and this process's CPU time. ``--count`` measures instead, in
instruction counts that a busy machine does not move: it starts a private ``redis-server``
under ``valgrind --tool=callgrind``, runs this script under callgrind against it for
``--tasks`` and for twice as many, and prints the difference per extra event for this
process and for Redis (start-up and imports cancel out; Redis's timer, whose cost grows with
the run's length rather than its load, is left out). ``--native`` runs this script outside
valgrind, only Redis under it: faster, and with batches closer to a real worker's (a process
under valgrind is so slow that Redis answers each batch before the next call is made), but it
counts Redis alone. ``--concurrency 1`` makes every batch one row: what a call costs Redis.

    bench/.venv/bin/python bench/redis_worker_path.py [--tasks 64] [--reports 50] [--url URL]
    bench/.venv/bin/python bench/redis_worker_path.py --count [--tasks 16] [--reports 50] [--native]
    bench/.venv/bin/python bench/redis_worker_path.py --count --tasks 2000 --reports 0 --lanes 64 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from _common import callgrind_total, redis_under_callgrind

from progressq import Hub, TaskContext
from progressq.backends.redis import RedisBackend

SECRET = "bench-secret-bench-secret-bench-secret"


async def workload(
    url: str, tasks: int, reports: int, concurrency: int, shards: int | None, lanes: int = 1, cleanup: bool = True
) -> tuple[float, int]:
    prefix = f"wpath{os.getpid()}"
    options = {} if shards is None else {"shards": shards}
    hub = Hub(
        RedisBackend.from_url(url, prefix=prefix, **options),
        secret=SECRET,
        concurrency=concurrency,
        progress_interval=0,
    )
    done = 0
    all_done = asyncio.Event()

    @hub.task("noop", timeout=600)
    async def noop(ctx: TaskContext) -> None:
        nonlocal done
        for i in range(reports):
            await ctx.report((i + 1) * 100 / reports, f"r{i}")
            await asyncio.sleep(0)
        done += 1
        if done == tasks:
            all_done.set()

    async with hub:
        cpu0 = time.process_time()
        submitted = 0

        async def lane() -> None:  # submits one after another; ``lanes`` of them at once
            nonlocal submitted
            while submitted < tasks:
                i, submitted = submitted, submitted + 1
                await hub.submit("noop", owner=f"u{i}", name="noop", payload={})

        await asyncio.gather(*(lane() for _ in range(max(1, lanes))))
        await all_done.wait()  # no polling meanwhile: its cost would grow with the run's length
        queue = hub.backend.queue
        while True:  # the last commits land after the handlers return
            stats = await queue.statistics()
            if stats.queued == 0 and stats.running == 0:
                break
            await asyncio.sleep(0.02)
        cpu = time.process_time() - cpu0
        client = hub.backend.client
        # leave the Redis as found (not the private one of --count: a key deleted a round trip
        # at a time would be counted, ~9 per task, more than a no-op task's own work)
        async for key in client.scan_iter(match=f"*{prefix}*", count=1000) if cleanup else _nothing():
            await client.delete(key)
    return cpu, tasks * (reports + 3)


async def _nothing() -> Any:
    return
    yield


def count(args: argparse.Namespace) -> None:
    """Instructions per event of this process and of a private Redis, by the difference of
    two sizes."""
    results: dict[int, tuple[int, int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tasks in (args.tasks, 2 * args.tasks):
            redis_out = Path(tmp, f"redis.{tasks}")
            python_out = Path(tmp, f"python.{tasks}")
            with redis_under_callgrind(redis_out) as port:
                under_valgrind = (
                    [] if args.native else ["valgrind", "--tool=callgrind", f"--callgrind-out-file={python_out}"]
                )
                run = subprocess.run(
                    [*under_valgrind, sys.executable, __file__, "--url", f"redis://127.0.0.1:{port}/0",
                     "--tasks", str(tasks), "--reports", str(args.reports), "--concurrency", str(args.concurrency),
                     "--lanes", str(args.lanes), "--no-cleanup",
                     *(["--shards", str(args.shards)] if args.shards else [])],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                events = int(re.search(r"events (\d+)", run.stdout).group(1))  # type: ignore[union-attr]
            # Redis's timer (memory statistics, expiry sampling) runs ten times a second,
            # whatever the load: under callgrind a longer run gets more of it, so it is left out
            python_total = 0 if args.native else callgrind_total(python_out)
            results[tasks] = (events, python_total, callgrind_total(redis_out, without="serverCron"))
            if args.keep:
                sides = (("redis", redis_out),) if args.native else (("python", python_out), ("redis", redis_out))
                for side, out in sides:
                    shutil.copy(out, Path(args.keep, f"callgrind.{side}.{tasks}"))
    (e1, p1, r1), (e2, p2, r2) = results[args.tasks], results[2 * args.tasks]
    process = "" if args.native else f"process {(p2 - p1) / (e2 - e1):,.0f} instructions, "
    print(f"events {e1} and {e2}: per extra event, {process}Redis {(r2 - r1) / (e2 - e1):,.0f}")
    extra_tasks = args.tasks  # the second run has this many more tasks
    process = "" if args.native else f"process {(p2 - p1) / extra_tasks:,.0f} instructions, "
    print(f"per extra task: {process}Redis {(r2 - r1) / extra_tasks:,.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--reports", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--lanes", type=int, default=1, help="submits at a time (the queue scenario: 64)")
    p.add_argument("--no-cleanup", action="store_true", help="leave the run's keys (a private Redis)")
    p.add_argument("--keep", default="", help="with --count: copy the callgrind profiles into this directory")
    p.add_argument("--shards", type=int, default=0, help="shards on a single Redis (default: the backend's)")
    p.add_argument("--count", action="store_true", help="instruction counts under callgrind (see above)")
    p.add_argument("--native", action="store_true", help="with --count: only Redis under callgrind")
    args = p.parse_args()
    if args.count:
        count(args)
        return
    shards = args.shards or None
    cpu, events = uvloop.run(
        workload(args.url, args.tasks, args.reports, args.concurrency, shards, args.lanes, not args.no_cleanup)
    )
    print(f"events {events} cpu {cpu:.3f} s ({cpu / events * 1e6:.1f} us per event)")


if __name__ == "__main__":
    main()
