"""A write whose answer never reached its caller may still have been stored.

A progress write can land in the backend while its caller hears nothing: the owner's cancel
arrives while the answer is on its way, or the reply is lost (a timeout). What the worker
writes next, its terminal state included, must then carry a newer revision than that write:
the Redis backend drops an event whose revision was already published, so a reused revision
would cost the client the task's end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest

from progressq import Hub, MemoryBackend, TaskContext, TaskRecord
from progressq.errors import BackendUnavailable
from progressq.testing import RecordingSink, check_task_events
from tests.redis_support import private_redis, redis_backends
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

SECRET = "interrupted-writes-secret-0123"
OWNER = "alice"
INTERRUPTED = "this write lands; its caller never hears so"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def running_hub(backend_kind: str) -> AsyncIterator[Hub]:
    if backend_kind == "memory":
        async with Hub(MemoryBackend(), secret=SECRET, progress_interval=0.0) as hub:
            yield hub
        return
    with redis_backends("interrupted") as make:
        async with Hub(make(), secret=SECRET, progress_interval=0.0) as hub:
            yield hub


def interrupt_the_write(hub: Hub, then: Callable[[TaskRecord], Awaitable[None]]) -> list[int]:
    """Make the worker's write of the progress report ``INTERRUPTED`` land, then run
    ``then`` instead of answering. Returns the revisions of every write the worker makes."""
    backend: Any = hub.backend
    write = backend.save_and_publish  # how the worker stores and publishes, on either backend
    revisions: list[int] = []

    async def landing_unanswered(lease: Any, record: TaskRecord, *args: Any, **kwargs: Any) -> bool:
        revisions.append(record.revision)
        stored: bool = await write(lease, record, *args, **kwargs)
        if record.message == INTERRUPTED and record.status == "running":
            assert stored
            await then(record)
        return stored

    backend.save_and_publish = landing_unanswered
    return revisions


def views(sink: RecordingSink, task_id: str) -> list[dict[str, Any]]:
    return [msgspec.json.decode(e.task_json) for e in sink.events if e.task_id == task_id]


async def test_a_cancel_that_arrives_while_a_landed_write_is_unanswered_still_ends_the_task(
    backend_kind: str,
) -> None:
    async with running_hub(backend_kind) as hub:
        record: TaskRecord | None = None

        async def cancel_and_wait(_: TaskRecord) -> None:
            assert record is not None
            await hub.cancel(record.id, owner=OWNER)
            await anyio.sleep_forever()  # the answer is late: the worker's cancellation lands here

        @hub.task("endless")
        async def endless(ctx: TaskContext) -> None:
            await ctx.report(10, INTERRUPTED)
            await anyio.sleep_forever()

        written = interrupt_the_write(hub, cancel_and_wait)
        sink = RecordingSink()
        await hub.registry.attach(OWNER, sink)
        record = await hub.submit("endless", owner=OWNER)
        await sink.wait_for(lambda _: "cancelled" in [v["status"] for v in views(sink, record.id)], PATIENCE)
    assert written == sorted(set(written)), f"a revision was written twice: {written}"
    final = views(sink, record.id)[-1]
    assert (final["status"], final["progress"], final["message"]) == ("cancelled", 10.0, "cancelled")
    check_task_events(sink.events)


async def test_a_landed_write_whose_reply_was_lost_does_not_cost_the_task_its_end(backend_kind: str) -> None:
    async with running_hub(backend_kind) as hub:

        async def lose_the_reply(_: TaskRecord) -> None:
            raise BackendUnavailable("Redis did not answer (save): the reply was lost")

        @hub.task("short")
        async def short(ctx: TaskContext) -> str:
            await ctx.report(60, INTERRUPTED)  # best effort: the report's failure is not the handler's
            await ctx.report(80, "the next report")
            return "done"

        written = interrupt_the_write(hub, lose_the_reply)
        sink = RecordingSink()
        await hub.registry.attach(OWNER, sink)
        record = await hub.submit("short", owner=OWNER)
        await sink.wait_for(lambda _: "completed" in [v["status"] for v in views(sink, record.id)], PATIENCE)
    assert written == sorted(set(written)), f"a revision was written twice: {written}"
    final = views(sink, record.id)[-1]
    assert (final["status"], final["progress"], final["result"]) == ("completed", 100.0, "done")
    assert "the next report" in [v["message"] for v in views(sink, record.id) if v["status"] == "running"]
    check_task_events(sink.events)


@pytest.mark.redis
async def test_a_caller_cancelled_while_its_batch_is_out_leaves_the_others_and_the_connections_right() -> None:
    # The batcher sends many callers' calls in one script call. One caller cancelled while
    # that call waits for Redis: its call still runs (Redis has it), every other caller
    # gets its own answer, and the connections answer the next calls with their own replies.
    from redis.asyncio import Redis

    from progressq.backends.redis._batch import _Batcher

    with private_redis() as server:
        client, control = Redis.from_url(server.url), Redis.from_url(server.url)
        push = client.register_script("for _, v in ipairs(ARGV) do redis.call('RPUSH', KEYS[1], v) end return ARGV")
        await client.script_load(push.script)

        async def send(items: Any) -> Any:
            return await push(keys=["ran"], args=items)

        batcher = _Batcher(send, in_flight=1)
        try:
            await control.client_pause(int(PATIENCE * 1000), all=False)  # writes wait: the batch stays out
            calls = [asyncio.ensure_future(batcher.call(n)) for n in range(8)]
            with anyio.fail_after(PATIENCE):  # one batch of the eight, sent and held by Redis
                while (await control.info("clients"))["blocked_clients"] < 1:
                    await asyncio.sleep(0.01)
            assert len(batcher._flushes) == 1
            assert not batcher._pending
            calls[3].cancel()
            await asyncio.sleep(0)
            await control.client_unpause()
            with anyio.fail_after(PATIENCE):
                answers = await asyncio.gather(*calls, return_exceptions=True)
                await batcher.drain()
            assert isinstance(answers[3], asyncio.CancelledError)
            assert [answers[n] for n in range(8) if n != 3] == [str(n).encode() for n in range(8) if n != 3]
            assert await control.lrange("ran", 0, -1) == [str(n).encode() for n in range(8)]  # 3 ran too
            with anyio.fail_after(PATIENCE):
                assert await asyncio.gather(*(client.echo(f"next {n}") for n in range(8))) == [
                    f"next {n}".encode() for n in range(8)
                ]
                assert await batcher.call("after") == b"after"
        finally:
            await client.aclose()
            await control.aclose()
