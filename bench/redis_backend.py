"""Rough numbers for the Redis backend: event delivery, task hand-off, takeover time.

    python bench/redis_backend.py [redis://127.0.0.1:6379/0]

Uses its own key prefix and deletes it afterwards.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import anyio

from progressq.backends.redis import RedisBackend
from progressq.contracts import Event, SinkDefaults, TaskRecord


class TimingSink(SinkDefaults):
    def __init__(self, total: int) -> None:
        self.total = total
        self.latencies: list[float] = []
        self.sent: dict[int, float] = {}
        self.done = anyio.Event()

    def deliver(self, event: Event) -> None:
        self.latencies.append(time.perf_counter() - self.sent[event.seq])
        if len(self.latencies) == self.total:
            self.done.set()


async def events(url: str, prefix: str, total: int = 5000) -> None:
    async with RedisBackend.from_url(url, prefix=prefix) as web, RedisBackend.from_url(url, prefix=prefix) as worker:
        sink = TimingSink(total)
        await web.registry.attach("alice", sink)
        body = b'{"id":"x","name":"bench","status":"running","progress":50.0,"message":"step 5"}'
        started = time.perf_counter()
        for n in range(1, total + 1):
            sink.sent[n] = time.perf_counter()
            await worker.registry.publish("alice", "taskProgress", "x", n, body)
        await sink.done.wait()
        elapsed = time.perf_counter() - started
        lat = sorted(sink.latencies)
        print(
            f"events: {total} published one after another and delivered to another backend in {elapsed:.2f} s "
            f"({total / elapsed:,.0f}/s); publish-to-deliver latency p50 {lat[len(lat) // 2] * 1000:.2f} ms, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms, max {lat[-1] * 1000:.2f} ms"
        )


async def tasks(url: str, prefix: str, total: int = 2000, workers: int = 2) -> None:
    backends = [RedisBackend.from_url(url, prefix=prefix) for _ in range(workers + 1)]
    async with backends[0] as producer, backends[1] as one, backends[2] as two:
        for n in range(total):
            await producer.queue.enqueue(TaskRecord(id=f"t{n}", kind="k", name="n", owner=f"o{n % 50}"))
        done = 0
        started = time.perf_counter()

        async def work(backend: RedisBackend) -> None:
            nonlocal done
            while done < total:
                with anyio.move_on_after(1.0):
                    lease = await backend.queue.lease()
                    running = lease.record.evolve(status="running")
                    await backend.queue.save(lease, running)
                    await backend.queue.save(lease, running.evolve(status="completed", progress=100.0))
                    await backend.queue.finish(lease)
                    done += 1

        async with anyio.create_task_group() as group:
            for backend in (one, two):
                for _ in range(4):
                    group.start_soon(work, backend)
        elapsed = time.perf_counter() - started
        print(
            f"tasks: {total} leased, saved twice and finished by 2 backends x 4 loops in {elapsed:.2f} s "
            f"({total / elapsed:,.0f}/s, no handler work, no events)"
        )


async def takeover(url: str, prefix: str, lease_timeout: float = 1.0, rounds: int = 5) -> None:
    waits: list[float] = []
    for n in range(rounds):
        async with RedisBackend.from_url(url, prefix=prefix, lease_timeout=lease_timeout) as rescuer:
            async with RedisBackend.from_url(url, prefix=prefix, lease_timeout=lease_timeout) as dying:
                await dying.queue.enqueue(TaskRecord(id=f"takeover-{n}", kind="k", name="n", owner="o"))
                await dying.queue.lease()
            gone = time.perf_counter()  # heartbeats stop here
            lease = await rescuer.queue.lease()
            waits.append(time.perf_counter() - gone)
            assert (lease.record.id, lease.record.attempt) == (f"takeover-{n}", 2)
            await rescuer.queue.finish(lease)
    print(
        f"takeover: with lease_timeout {lease_timeout:g} s a dead worker's task was taken over after "
        f"{statistics.mean(waits):.2f} s on average (max {max(waits):.2f} s, {rounds} rounds)"
    )


async def main(url: str) -> None:
    prefix = f"pqbench:{uuid.uuid4().hex[:8]}"
    try:
        await events(url, prefix + ":e")
        await tasks(url, prefix + ":t")
        await takeover(url, prefix + ":k")
    finally:
        async with RedisBackend.from_url(url, prefix=prefix) as backend:
            keys = [key async for key in backend.client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await backend.client.delete(*keys)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
