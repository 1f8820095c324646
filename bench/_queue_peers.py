"""The queue scenario's peers, each with its own worker and enqueue call: SAQ (on Redis and on
PostgreSQL), streaQ, arq, taskiq, and the bare Redis Streams loop that is the limit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import _common
from _common import REDIS_DB, postgres_url, redis_url
from _queue_work import await_statuses, begin, enqueue_all, finish, quietly, work

CONCURRENCY = 32


async def run_saq(n: int, tag: str, limit_s: float, *, postgres: bool = False) -> dict[str, float]:
    from saq import Queue, Worker

    async def noop(ctx: Any, *, i: int) -> None:
        await work(i)

    queue = Queue.from_url(postgres_url() if postgres else redis_url(), name=f"bench-{tag}")
    await queue.connect()
    worker = Worker(queue, functions=[("work", noop)], concurrency=CONCURRENCY)
    runner = asyncio.create_task(worker.start())
    try:
        start = begin()
        enqueue_s = await enqueue_all(n, lambda i: queue.enqueue("work", i=i))
        result = await finish(start, enqueue_s, limit_s)
        if postgres:  # SAQ's own record: every job complete (kept for its default ttl, 600 s)
            query = "SELECT status, count(*) FROM saq_jobs GROUP BY status"
            await await_statuses(postgres_url(), query, {"complete": n})
        return result
    finally:
        runner.cancel()
        await quietly(worker.stop(), runner, queue.disconnect())


async def run_streaq(n: int, tag: str, limit_s: float) -> dict[str, float]:
    from streaq import Worker

    worker = Worker(redis_url=redis_url(), concurrency=CONCURRENCY, queue_name=f"bench-{tag}", handle_signals=False)

    @worker.task
    async def noop(i: int) -> None:
        await work(i)

    runner = asyncio.create_task(worker.run_async())  # enters the worker; enqueue through it
    try:
        await asyncio.sleep(0.3)

        async def enqueue(i: int) -> None:
            await noop.enqueue(i)

        start = begin()
        enqueue_s = await enqueue_all(n, enqueue)
        return await finish(start, enqueue_s, limit_s)
    finally:
        runner.cancel()
        await quietly(runner)


async def run_arq(n: int, tag: str, limit_s: float) -> dict[str, float]:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def noop(ctx: Any, i: int) -> None:
        await work(i)

    queue_name = f"bench-{tag}"
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=_common.REDIS_PORT, database=REDIS_DB))
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
        start = begin()
        enqueue_s = await enqueue_all(n, lambda i: pool.enqueue_job("work", i, _queue_name=queue_name))
        return await finish(start, enqueue_s, limit_s)
    finally:
        runner.cancel()
        await quietly(runner, worker.close())


async def run_taskiq(n: int, tag: str, limit_s: float) -> dict[str, float]:
    from taskiq.receiver import Receiver
    from taskiq_redis import RedisStreamBroker

    broker = RedisStreamBroker(redis_url(), queue_name=f"bench-{tag}", xread_block=100)

    @broker.task(task_name="work")
    async def noop(i: int) -> None:
        await work(i)

    broker.is_worker_process = True
    await broker.startup()
    receiver = Receiver(broker, max_async_tasks=CONCURRENCY, run_startup=False)
    stop = asyncio.Event()
    runner = asyncio.create_task(receiver.listen(stop))
    try:
        await asyncio.sleep(0.2)

        async def enqueue(i: int) -> None:
            await noop.kiq(i)

        start = begin()
        enqueue_s = await enqueue_all(n, enqueue)
        return await finish(start, enqueue_s, limit_s)
    finally:
        stop.set()
        runner.cancel()
        await quietly(runner, broker.shutdown())


async def run_redis_streams(n: int, tag: str, limit_s: float) -> dict[str, float]:
    """The limit: XADD pipelined by 500, XREADGROUP up to the free slots, XACK batched."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host="127.0.0.1", port=_common.REDIS_PORT, db=REDIS_DB)
    stream, group = f"bench-{tag}", "g"
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    acks: list[bytes] = []
    running: set[asyncio.Task[None]] = set()
    freed = asyncio.Event()

    async def run_one(entry: bytes, index: int) -> None:
        await work(index)
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
                for entry_id, fields in entries:
                    task = asyncio.create_task(run_one(entry_id, int(fields[b"i"])))
                    running.add(task)
                    task.add_done_callback(running.discard)

    consumer = asyncio.create_task(consume())
    try:
        start = begin()
        for first in range(0, n, 500):
            pipe = client.pipeline(transaction=False)
            for index in range(first, min(n, first + 500)):
                pipe.xadd(stream, {"t": b"work", "i": index})
            await pipe.execute()
        enqueue_s = time.perf_counter() - start
        return await finish(start, enqueue_s, limit_s)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, *running, return_exceptions=True)
        await client.aclose()
