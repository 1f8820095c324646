"""A registry that lost an identity's history calls ``resync`` on every sink of that identity
(``EventSink.resync``), then delivers on from the identity's current ``seq``. Against a real
Redis and PostgreSQL, each in a store of its own."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from progressq.contracts import Event, EventSink, SinkDefaults
from progressq.testing import RecordingSink
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's and psycopg's asyncio APIs


async def _wait_for_resync(sink: RecordingSink) -> None:
    with anyio.fail_after(PATIENCE):
        while not sink.resyncs:
            await anyio.sleep(0.01)


@pytest.mark.redis
async def test_redis_resyncs_every_sink_after_a_resubscribe_finds_its_data_lost() -> None:
    import redis

    from progressq.backends.redis import RedisBackend
    from tests.redis_support import private_redis

    with private_redis() as server:  # its own server: flushed and its clients killed below
        admin = redis.Redis.from_url(server.url)
        try:
            async with (
                RedisBackend.from_url(server.url, prefix="resync") as listener,
                RedisBackend.from_url(server.url, prefix="resync") as publisher,
            ):
                sinks = [RecordingSink(), RecordingSink()]
                for sink in sinks:
                    await listener.registry.attach("alice", sink)
                for n in range(1, 4):
                    await publisher.registry.publish("alice", "taskProgress", "t", n, b'{"n":%d}' % n)
                for sink in sinks:
                    await sink.wait_count(3)
                    assert sink.resyncs == 0
                admin.flushall()  # as a restart without persistence: the seq starts again at 1
                assert admin.execute_command("CLIENT KILL TYPE pubsub") >= 1  # the listener subscribes again
                for sink in sinks:
                    await _wait_for_resync(sink)
                await publisher.registry.publish("alice", "taskProgress", "t", 4, b'{"n":4}')
                for sink in sinks:  # delivered on from the new history
                    await sink.wait_count(4)
                    assert sink.seqs == [1, 2, 3, 1]
                    assert sink.resyncs == 1
        finally:
            admin.close()


@pytest.mark.postgres
async def test_postgres_resyncs_every_sink_when_its_history_no_longer_holds_a_gap() -> None:
    psycopg = pytest.importorskip("psycopg", reason='needs pip install "progressq[postgres]"')
    from progressq.backends.postgres import PostgresBackend
    from tests.postgres_support import database_url, schema_of_its_own

    def sql(statement: str, *args: Any) -> None:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            conn.execute(statement, args or None)

    with schema_of_its_own("resync") as schema:
        async with (
            PostgresBackend.from_url(database_url(), schema=schema) as listener,
            PostgresBackend.from_url(database_url(), schema=schema) as publisher,
        ):
            sinks = [RecordingSink(), RecordingSink()]
            for sink in sinks:
                await listener.registry.attach("alice", sink)
            for n in range(1, 4):
                await publisher.registry.publish("alice", "taskProgress", "t", n, b'{"n":%d}' % n)
            for sink in sinks:
                await sink.wait_count(3)
            # Events 4 to 8 numbered but never kept: the next event's gap cannot be filled.
            sql(f"UPDATE {schema}.identities SET seq = seq + 5 WHERE identity = %s", "alice")
            await publisher.registry.publish("alice", "taskProgress", "t", 9, b'{"n":9}')
            for sink in sinks:
                await _wait_for_resync(sink)
            await publisher.registry.publish("alice", "taskProgress", "t", 10, b'{"n":10}')
            for sink in sinks:  # delivered on from the identity's current seq
                await sink.wait_for(lambda events: events[-1].seq == 10)
                assert sink.seqs == [1, 2, 3, 10]
                assert sink.resyncs == 1


def test_a_sink_on_the_defaults_has_nothing_to_redo() -> None:
    class Counting(SinkDefaults):
        def __init__(self) -> None:
            self.count = 0

        def deliver(self, event: Event) -> None:
            self.count += 1

    sink: EventSink = Counting()
    sink.resync()  # declared, and harmless
    sink.deliver(Event(1, "taskProgress", "t", 1, b"{}"))
    assert isinstance(sink, Counting)
    assert sink.count == 1
