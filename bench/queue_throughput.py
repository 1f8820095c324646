"""Scenario 1: queue throughput, enqueue -> complete, concurrency 32, one worker process.

Each round runs one system in a fresh process: its worker (32 at once) starts, then the
same process enqueues N tasks (64 enqueues in flight at a time, each library's own call)
while the worker drains them. Measured: from the first enqueue to the end of the last
task's handler. No-op tasks and tasks that sleep 25 ms. A bare Redis Streams loop
(pipelined XADD, XREADGROUP, XACK) is the limit; progressq's memory backend is shown too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from _common import (
    BENCH,
    REDIS_DB,
    SECRET,
    flush_bench_db,
    fmt,
    median,
    parser,
    redis_url,
    selected,
    spread,
    table,
    write_results,
)

SYSTEMS = ("progressq-redis", "progressq-memory", "saq", "streaq", "arq", "taskiq", "redis-streams")
PEERS = ("saq", "streaq", "arq", "taskiq")
CONCURRENCY = 32
IN_FLIGHT = 64


class Tally:
    """Counts finished handlers; ``done`` fires at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()
        self.last = 0.0

    def tick(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.last = time.perf_counter()
            self.done.set()


TALLY = Tally(0)
SLEEP = 0.0


async def work() -> None:
    if SLEEP:
        await asyncio.sleep(SLEEP)
    TALLY.tick()


async def enqueue_all(n: int, enqueue: Callable[[int], Awaitable[Any]]) -> float:
    """Enqueue ``n`` tasks, ``IN_FLIGHT`` at a time; the seconds it took."""
    start = time.perf_counter()
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            index = next_index
            next_index += 1
            await enqueue(index)

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - start


async def quietly(*steps: Awaitable[Any]) -> None:
    """Tear down after the measurement: a peer's shutdown noise must not lose the result."""
    for step in steps:
        with contextlib.suppress(BaseException):
            await step


async def finish(start: float, enqueue_s: float, limit_s: float) -> dict[str, float]:
    await asyncio.wait_for(TALLY.done.wait(), limit_s)
    total = TALLY.last - start
    return {"enqueue_s": enqueue_s, "total_s": total, "tasks_per_s": TALLY.target / total}


# --- the systems ----------------------------------------------------------------------------


async def run_progressq(n: int, backend_kind: str, tag: str, limit_s: float) -> dict[str, float]:
    from progressq import Hub, MemoryBackend, TaskContext

    backend: Any
    if backend_kind == "redis":
        from progressq.backends.redis import RedisBackend

        backend = RedisBackend.from_url(redis_url(), prefix=f"bench-{tag}")
    else:
        backend = MemoryBackend(capacity=n + 1, retention=n + 1)
    # BENCH_OWNER_LIMIT=0 turns off the per-owner limit on unfinished tasks (default 100),
    # whose check reads the owner's task list on every submit.
    limit = os.environ.get("BENCH_OWNER_LIMIT")
    options: dict[str, Any] = {} if limit is None else {"max_active_per_owner": int(limit) or None}
    hub = Hub(backend, secret=SECRET, concurrency=CONCURRENCY, shutdown_grace=0.5, **options)

    @hub.task("work")
    async def _work(ctx: TaskContext) -> None:
        await work()

    # At most 50 tasks per owner, so that the default per-owner limit (100 unfinished tasks)
    # never refuses one, whatever the load.
    owners = [f"owner-{i}" for i in range(max(100, n // 50))]
    async with hub:
        start = time.perf_counter()
        enqueue_s = await enqueue_all(n, lambda i: hub.submit("work", owner=owners[i % len(owners)]))
        return await finish(start, enqueue_s, limit_s)


async def run_saq(n: int, tag: str, limit_s: float) -> dict[str, float]:
    from saq import Queue, Worker

    async def noop(ctx: Any) -> None:
        await work()

    queue = Queue.from_url(redis_url(), name=f"bench-{tag}")
    await queue.connect()
    worker = Worker(queue, functions=[("work", noop)], concurrency=CONCURRENCY)
    runner = asyncio.create_task(worker.start())
    try:
        start = time.perf_counter()
        enqueue_s = await enqueue_all(n, lambda i: queue.enqueue("work"))
        return await finish(start, enqueue_s, limit_s)
    finally:
        runner.cancel()
        await quietly(worker.stop(), runner, queue.disconnect())


async def run_streaq(n: int, tag: str, limit_s: float) -> dict[str, float]:
    from streaq import Worker

    worker = Worker(redis_url=redis_url(), concurrency=CONCURRENCY, queue_name=f"bench-{tag}", handle_signals=False)

    @worker.task
    async def noop() -> None:
        await work()

    runner = asyncio.create_task(worker.run_async())  # enters the worker; enqueue through it
    try:
        await asyncio.sleep(0.3)

        async def enqueue(i: int) -> None:
            await noop.enqueue()

        start = time.perf_counter()
        enqueue_s = await enqueue_all(n, enqueue)
        return await finish(start, enqueue_s, limit_s)
    finally:
        runner.cancel()
        await quietly(runner)


async def run_arq(n: int, tag: str, limit_s: float) -> dict[str, float]:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def noop(ctx: Any) -> None:
        await work()

    queue_name = f"bench-{tag}"
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=6379, database=REDIS_DB))
    # arq polls; its default poll delay (0.5 s) would measure the delay, not the queue.
    worker = Worker(
        functions=[func(noop, name="work")],
        redis_pool=pool,
        queue_name=queue_name,
        max_jobs=CONCURRENCY,
        handle_signals=False,
        poll_delay=0.002,
        keep_result=0,
    )
    runner = asyncio.create_task(worker.main())
    try:
        start = time.perf_counter()
        enqueue_s = await enqueue_all(n, lambda i: pool.enqueue_job("work", _queue_name=queue_name))
        return await finish(start, enqueue_s, limit_s)
    finally:
        runner.cancel()
        await quietly(runner, worker.close())


async def run_taskiq(n: int, tag: str, limit_s: float) -> dict[str, float]:
    from taskiq.receiver import Receiver
    from taskiq_redis import RedisStreamBroker

    broker = RedisStreamBroker(redis_url(), queue_name=f"bench-{tag}", xread_block=100)

    @broker.task(task_name="work")
    async def noop() -> None:
        await work()

    broker.is_worker_process = True
    await broker.startup()
    receiver = Receiver(broker, max_async_tasks=CONCURRENCY, run_startup=False)
    stop = asyncio.Event()
    runner = asyncio.create_task(receiver.listen(stop))
    try:
        await asyncio.sleep(0.2)

        async def enqueue(i: int) -> None:
            await noop.kiq()

        start = time.perf_counter()
        enqueue_s = await enqueue_all(n, enqueue)
        return await finish(start, enqueue_s, limit_s)
    finally:
        stop.set()
        runner.cancel()
        await quietly(runner, broker.shutdown())


async def run_redis_streams(n: int, tag: str, limit_s: float) -> dict[str, float]:
    """The limit: XADD pipelined by 500, XREADGROUP up to the free slots, XACK batched."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    stream, group = f"bench-{tag}", "g"
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    acks: list[bytes] = []
    running: set[asyncio.Task[None]] = set()
    freed = asyncio.Event()

    async def run_one(entry: bytes) -> None:
        await work()
        acks.append(entry)
        freed.set()

    async def consume() -> None:
        while True:
            free = CONCURRENCY - len(running)
            if free == 0:
                freed.clear()
                await freed.wait()
                await asyncio.sleep(0)  # let the finished tasks' callbacks leave ``running``
                continue
            pipe = client.pipeline(transaction=False)
            if acks:
                pipe.xack(stream, group, *acks)
                acks.clear()
            pipe.xreadgroup(group, "c", {stream: ">"}, count=free, block=50)
            answer = (await pipe.execute())[-1]
            for _name, entries in answer or []:
                for entry_id, _fields in entries:
                    task = asyncio.create_task(run_one(entry_id))
                    running.add(task)
                    task.add_done_callback(running.discard)

    consumer = asyncio.create_task(consume())
    try:
        start = time.perf_counter()
        for first in range(0, n, 500):
            pipe = client.pipeline(transaction=False)
            for _ in range(first, min(n, first + 500)):
                pipe.xadd(stream, {"t": b"work"})
            await pipe.execute()
        enqueue_s = time.perf_counter() - start
        return await finish(start, enqueue_s, limit_s)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, *running, return_exceptions=True)
        await client.aclose()


async def child(system: str, n: int, sleep: float, limit_s: float) -> dict[str, float]:
    global TALLY, SLEEP
    TALLY, SLEEP = Tally(n), sleep
    tag = uuid.uuid4().hex[:8]
    match system:
        case "progressq-redis":
            return await run_progressq(n, "redis", tag, limit_s)
        case "progressq-memory":
            return await run_progressq(n, "memory", tag, limit_s)
        case "saq":
            return await run_saq(n, tag, limit_s)
        case "streaq":
            return await run_streaq(n, tag, limit_s)
        case "arq":
            return await run_arq(n, tag, limit_s)
        case "taskiq":
            return await run_taskiq(n, tag, limit_s)
        case "redis-streams":
            return await run_redis_streams(n, tag, limit_s)
    raise ValueError(system)


def one_round(system: str, n: int, sleep: float, limit_s: float) -> dict[str, float] | None:
    command = [sys.executable, str(BENCH / "queue_throughput.py"), "--child", system, "--n", str(n)]
    command += ["--sleep", str(sleep), "--timeout", str(limit_s)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s + 30, cwd=BENCH.parent)
    except subprocess.TimeoutExpired:
        print(f"  {system}: timed out", flush=True)
        return None
    finally:
        flush_bench_db()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  {system}: failed (exit {done.returncode})\n{done.stderr[-2000:]}", flush=True)
        return None
    result: dict[str, float] = json.loads(lines[-1])
    return result


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--child", default="")
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.n, args.sleep, args.timeout))), flush=True)
        return

    rounds = args.rounds or (1 if args.quick else 3)
    workloads = [("no-op", 1_500 if args.quick else 20_000, 0.0), ("sleep 25 ms", 320 if args.quick else 2_000, 0.025)]
    systems = selected(args.only, SYSTEMS)
    results: dict[str, Any] = {"rounds": rounds, "concurrency": CONCURRENCY, "workloads": {}}
    texts = []
    for label, n, sleep in workloads:
        per_system: dict[str, list[float]] = {}
        for round_index in range(rounds):
            for system in systems:
                outcome = one_round(system, n, sleep, limit_s=60.0 if args.quick else 180.0)
                rate = outcome["tasks_per_s"] if outcome else float("nan")
                per_system.setdefault(system, []).append(rate)
                print(f"  [{label}] round {round_index + 1}: {system:17} {fmt(rate)} tasks/s", flush=True)
        medians = {s: median([v for v in vs if v == v]) for s, vs in per_system.items()}
        peers = [medians[s] for s in PEERS if s in medians and medians[s] == medians[s]]
        best_peer = max(peers) if peers else float("nan")
        pq = medians.get("progressq-redis", float("nan"))
        limit = medians.get("redis-streams", float("nan"))
        rows = []
        for system in systems:
            values = [v for v in per_system[system] if v == v]
            m = medians[system]
            rows.append(
                [
                    system,
                    fmt(m),
                    f"{spread(values) * 100:.0f}%",
                    fmt(pq / m, 2) if m == m and m else "-",
                ]
            )
        texts.append(
            table(
                f"Queue throughput, {label}: {n} tasks, concurrency {CONCURRENCY} (tasks/s, median of {rounds})",
                ["system", "tasks/s", "spread", "progressq-redis / this"],
                rows,
            )
        )
        print(
            f"progressq-redis vs best peer: {fmt(pq / best_peer, 2)}x (target >= 1.5x); "
            f"vs bare Redis Streams: {fmt(pq / limit, 2)}x (target >= 0.7x)",
            flush=True,
        )
        results["workloads"][label] = {
            "n": n,
            "sleep_s": sleep,
            "rounds": per_system,
            "median_tasks_per_s": medians,
            "progressq_vs_best_peer": pq / best_peer if best_peer == best_peer else None,
            "progressq_vs_limit": pq / limit if limit == limit else None,
        }
    write_results("queue_throughput", results)


if __name__ == "__main__":
    main()
