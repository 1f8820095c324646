"""What only the PostgreSQL backend does: leases that expire, fencing, dead letters, large
events by reference, a lost listening connection, migrations, outages. Against a real
PostgreSQL; each test in a schema of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
import pytest

from tests.postgres_support import database_url, drop_schema, new_schema, schema_of_its_own
from tests.redis_support import free_port
from tests.waiting import PATIENCE

psycopg = pytest.importorskip("psycopg", reason='needs pip install "progressq[postgres]"')

from progressq.backends.postgres import PostgresBackend  # noqa: E402
from progressq.backends.postgres._schema import VERSION  # noqa: E402
from progressq.contracts import Backend, Lease, TaskRecord  # noqa: E402
from progressq.errors import BackendUnavailable, ConfigurationError  # noqa: E402
from progressq.testing import RecordingSink  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

Make = Callable[..., PostgresBackend]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # psycopg's async API


@pytest.fixture
def schema() -> Iterator[str]:
    with schema_of_its_own("backend") as name:
        yield name


@pytest.fixture
def make(schema: str) -> Make:
    """Backends on the session's database in the test's schema."""

    def factory(**options: Any) -> PostgresBackend:
        return PostgresBackend.from_url(database_url(), schema=schema, **options)

    return factory


def _record(owner: str = "alice", n: int = 0) -> TaskRecord:
    return TaskRecord(id=f"task-{n}", kind="work", name=f"task {n}", owner=owner)


async def _lease_within(backend: Backend, seconds: float) -> Lease | None:
    with anyio.move_on_after(seconds):
        return await backend.queue.lease()
    return None


async def _publish(backend: Backend, record: TaskRecord) -> int:
    event = await backend.registry.publish(record.owner, "taskProgress", record.id, record.revision, record.view_json())
    return event.seq


def _view(event: Any) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.json.decode(event.task_json)
    return view


def _sql(statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        cursor = conn.execute(statement, args or None)
        return cursor.fetchall() if cursor.description else []


async def test_a_dead_workers_task_is_taken_over_and_its_writes_fenced(make: Make) -> None:
    async with make(lease_timeout=0.5) as observer:
        sink = RecordingSink()
        await observer.registry.attach("alice", sink)
        assert await observer.queue.enqueue_and_announce(_record(), max_unfinished=None) is None  # seq 1
        async with make(lease_timeout=0.5) as dying:
            first = await dying.queue.lease()
            running = first.record.evolve(status="running", progress=40.0)
            assert await dying.queue.save_and_publish(first, running, running.view_json())  # seq 2
            in_flight = running.evolve(progress=60.0)
            assert await dying.queue.save(first, in_flight)
            # stalls here, between saving and publishing
        # the dying worker's heartbeats stopped with it: after lease_timeout another takes over
        async with make(lease_timeout=0.5) as rescuer:
            second = await _lease_within(rescuer, PATIENCE)
            assert second is not None
            assert (second.record.id, second.record.attempt, second.record.progress) == (first.record.id, 2, 60.0)
            # everything the first attempt still tries is refused, its in-flight event included
            assert await _publish(observer, in_flight) == 0
            late = in_flight.evolve(progress=90.0)
            assert not await observer.queue.save(first, late)
            assert not await observer.queue.save_and_publish(first, late, late.view_json())
            assert not await observer.queue.extend(first)
            assert not await observer.queue.release(first, late.evolve(status="queued"))
            await observer.queue.finish(first)  # a stale ack must not end the new attempt
            assert await rescuer.queue.extend(second)
            restarted = second.record.evolve(status="running", progress=0.0)
            assert await rescuer.queue.save_and_publish(second, restarted, restarted.view_json())
            await sink.wait_count(3)
            await anyio.sleep(0.2)
            assert [(e.seq, _view(e)["attempt"], _view(e)["progress"]) for e in sink.events] == [
                (1, 0, 0.0),
                (2, 1, 40.0),
                (3, 2, 0.0),
            ]


async def test_a_connection_stalled_inside_a_transaction_is_ended_with_its_locks(make: Make) -> None:
    # A worker paused mid-transaction (SIGSTOP, a frozen VM) held its task's row lock for as
    # long as it was paused, and the takeover of its expired lease waited on it.
    async with make(lease_timeout=0.5) as backend:
        async with backend._pool.connection() as conn:
            setting = await (await conn.execute("SHOW idle_in_transaction_session_timeout")).fetchone()
            assert setting == ("5s",)  # the lease, but never below 5 s
            pid = conn.info.backend_pid
            await conn.execute("BEGIN")
            await conn.execute(f'SELECT 1 FROM "{backend.schema}".tasks FOR UPDATE')
            with anyio.fail_after(PATIENCE):  # the server ends the session, and its locks go
                while _sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid):
                    await anyio.sleep(0.2)
            with pytest.raises(psycopg.Error, match="idle-in-transaction"):
                await conn.execute("SELECT 1")
        record = _record()
        await backend.queue.enqueue(record)  # the pool replaced the dead connection
        assert await backend.queue.get(record.id) == record
    async with make() as default, default._pool.connection() as conn:
        setting = await (await conn.execute("SHOW idle_in_transaction_session_timeout")).fetchone()
        assert setting == ("30s",)


async def test_heartbeats_keep_a_live_lease(make: Make) -> None:
    # A 2 s lease: a process that a busy machine leaves without CPU for a shorter lease's whole
    # span misses its beats, and the lease is rightly lost; that is not what is tested here.
    async with make(lease_timeout=2.0) as holder, make(lease_timeout=2.0) as other:
        await holder.queue.enqueue(_record())
        lease = await holder.queue.lease()
        assert await _lease_within(other, 8.0) is None  # four lease timeouts: still held
        assert await holder.queue.extend(lease)
        done = lease.record.evolve(status="completed", finished_at=datetime.now(UTC))
        assert await holder.queue.save(lease, done)
        await holder.queue.finish(lease)
        assert await _lease_within(other, 1.5) is None


async def test_a_task_that_keeps_killing_workers_is_dead_lettered(make: Make) -> None:
    async with make(lease_timeout=0.3, max_deliveries=2) as observer:
        sink = RecordingSink()
        await observer.registry.attach("alice", sink)
        record = _record()
        await observer.queue.enqueue_and_announce(record, max_unfinished=None)
        for attempt in (1, 2):  # two workers take it and die
            async with make(lease_timeout=0.3, max_deliveries=2) as doomed:
                lease = await _lease_within(doomed, PATIENCE)
                assert lease is not None
                assert lease.record.attempt == attempt
        async with make(lease_timeout=0.3, max_deliveries=2) as third:
            assert await _lease_within(third, 2.0) is None  # taken, found hopeless, not handed out
        stored = await observer.queue.get(record.id)
        assert stored is not None
        assert (stored.status, stored.finished_at is not None) == ("failed", True)
        assert stored.error is not None
        assert "gave up after 2 deliveries" in stored.error
        await sink.wait_count(2)
        queued, event = sink.events  # the enqueue announced it; then the dead letter
        assert (_view(queued)["status"], _view(event)["status"]) == ("queued", "failed")
        assert _view(event)["error"] == stored.error
        assert [r.id for r in await observer.queue.dead_letters(10)] == [record.id]
        assert (await observer.queue.statistics()).running == 0


async def test_publish_drops_stale_and_repeated_revisions(make: Make) -> None:
    async with make() as backend:
        record = _record()
        await backend.queue.enqueue_and_announce(record, max_unfinished=None)  # seq 1
        assert await _publish(backend, record) == 0  # the same revision again
        lease = await backend.queue.lease()
        assert await _publish(backend, record) == 0  # older than the stored revision
        running = lease.record.evolve(status="running")
        assert await backend.queue.save(lease, running)
        assert await _publish(backend, running) == 2
        # events about things that are not stored tasks are never dropped
        for n in range(3):
            assert (await backend.registry.publish("alice", "taskProgress", "not-a-task", 1, b"{}")).seq == 3 + n


async def test_an_owner_over_its_limit_of_unfinished_tasks_is_refused_atomically(make: Make) -> None:
    async with make() as one, make() as two:
        records = [_record(n=n) for n in range(6)]
        answers = []

        async def submit(backend: PostgresBackend, record: TaskRecord) -> None:
            answers.append(await backend.queue.enqueue_and_announce(record, max_unfinished=2))

        async with anyio.create_task_group() as group:
            for n, record in enumerate(records):
                group.start_soon(submit, (one, two)[n % 2], record)
        assert answers.count(None) == 2  # racing submits in two processes: two pass, no more
        assert sorted(a for a in answers if a is not None) == [2, 2, 2, 2]
        assert (await one.queue.statistics()).queued == 2


async def test_an_event_too_large_to_notify_is_read_from_the_history(make: Make) -> None:
    async with make() as listener, make() as publisher:
        sink = RecordingSink()
        await listener.registry.attach("alice", sink)
        big = b'{"blob":"' + b"x" * 20_000 + b'"}'
        await publisher.registry.publish("alice", "taskProgress", "t", 1, b'{"n":1}')
        await publisher.registry.publish("alice", "taskProgress", "t", 2, big)
        await publisher.registry.publish("alice", "taskProgress", "t", 3, b'{"n":3}')
        await sink.wait_count(3)
        assert sink.seqs == [1, 2, 3]
        assert sink.events[1].task_json == big


async def test_finished_tasks_expire_after_retention(make: Make) -> None:
    async with make(retention=1) as backend:
        kept, finished = _record(n=1), _record(n=2)
        await backend.queue.enqueue(kept)
        await backend.queue.enqueue(finished)
        await backend.queue.lease()
        lease = await backend.queue.lease()
        assert await backend.queue.save(lease, lease.record.evolve(status="completed"))
        await backend.queue.finish(lease)
        with anyio.fail_after(PATIENCE):
            while await backend.queue.get(finished.id) is not None:
                await anyio.sleep(0.2)
        assert [r.id for r in await backend.queue.list_by_owner("alice")] == [kept.id]
        with anyio.fail_after(PATIENCE):  # and the row itself is deleted by a sweep
            while _sql(f'SELECT id FROM "{backend.schema}".tasks WHERE id = %s', finished.id):
                await anyio.sleep(0.2)


async def test_a_killed_listening_connection_resumes_without_gaps(make: Make) -> None:
    async with make() as listener, make() as publisher:
        identities = ["alice", "bob", "carol"]
        sinks = {identity: RecordingSink() for identity in identities}
        for identity, sink in sinks.items():
            await listener.registry.attach(identity, sink)
        total, killed = 240, 0
        for n in range(1, total + 1):
            await publisher.registry.publish(identities[n % 3], "taskProgress", "t", n, b'{"n":%d}' % n)
            if n % 60 == 0:
                rows = _sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query = %s AND datname = current_database()",
                    f'LISTEN "{listener.schema}_events"',
                )
                killed += sum(1 for (done,) in rows if done)
            await anyio.sleep(0.002)
        assert killed >= 3  # the listening connection really went away, again and again
        for identity, sink in sinks.items():
            await sink.wait_count(total // 3)
            assert sink.seqs == list(range(1, total // 3 + 1)), identity
            assert all(int(_view(e)["n"]) % 3 == identities.index(identity) for e in sink.events)
        await publisher.registry.publish("alice", "taskProgress", "t", 999, b'{"n":999}')  # live again
        await sinks["alice"].wait_count(total // 3 + 1)


async def test_the_schema_is_versioned_and_a_newer_one_refused(schema: str, make: Make) -> None:
    async with make():
        pass
    async with make():  # opening again migrates nothing
        pass
    assert _sql(f'SELECT version FROM "{schema}".schema_version') == [(v,) for v in range(1, VERSION + 1)]
    _sql(f'INSERT INTO "{schema}".schema_version (version) VALUES (%s)', VERSION + 1)
    with pytest.raises(ConfigurationError, match=f"version {VERSION + 1}, newer"):
        async with make():
            pass


async def test_apps_in_two_schemas_share_nothing() -> None:
    schemas = [new_schema("app"), new_schema("app")]
    try:
        async with (
            PostgresBackend.from_url(database_url(), schema=schemas[0]) as one,
            PostgresBackend.from_url(database_url(), schema=schemas[1]) as two,
        ):
            await one.queue.enqueue(_record())
            assert await two.queue.get("task-0") is None
            assert await _lease_within(two, 0.5) is None
            assert (await _lease_within(one, PATIENCE)) is not None
    finally:
        for schema in schemas:
            drop_schema(schema)


async def test_postgres_down_gives_clear_errors_and_a_waiting_worker() -> None:
    backend = PostgresBackend.from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/none?connect_timeout=1")
    with pytest.raises(BackendUnavailable, match="could not open PostgreSQL"):
        async with backend:
            pass


def test_from_url_and_configuration() -> None:
    backend = PostgresBackend.from_url("postgresql://app:s3cret@db.invalid:5433/app", schema="myapp")
    assert "s3cret" not in backend.url
    assert "s3cret" not in repr(backend)
    assert backend.url == "postgresql://app:***@db.invalid:5433/app"
    assert "s3cret" not in PostgresBackend("host=db.invalid password=s3cret dbname=app").url
    with pytest.raises(ConfigurationError):
        PostgresBackend.from_url("redis://localhost")
    for bad in ("Has-Caps", "1starts_with_a_digit", "x" * 41, ""):
        with pytest.raises(ConfigurationError):
            PostgresBackend.from_url("postgresql://localhost/app", schema=bad)
    with pytest.raises(ConfigurationError):
        PostgresBackend.from_url("postgresql://localhost/app", lease_timeout=0)


def test_it_runs_on_asyncio_only() -> None:
    async def open_on_trio() -> None:
        async with PostgresBackend.from_url("postgresql://localhost/app"):
            pass

    with pytest.raises(ConfigurationError, match="asyncio only"):
        anyio.run(open_on_trio, backend="trio")


async def test_reads_go_on_when_the_pooled_connections_were_cut_while_idle(make: Make) -> None:
    async with make(pool_size=2) as backend:
        record = _record()
        await backend.queue.enqueue(record)
        for _ in range(3):  # every pooled connection (and the listening ones) cut: a restart, a proxy
            cut = _sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cut[0][0] >= 1
            assert await backend.queue.get(record.id) == record
            assert [r.id for r in await backend.queue.list_by_owner("alice")] == [record.id]
            assert (await backend.queue.statistics()).queued == 1


async def test_lease_many_takes_owners_in_turn_at_most_the_free_slots_and_holds_each_lease(make: Make) -> None:
    # A lease long enough that a busy machine's stalls (the heartbeat goes every second) do
    # not let it lapse, and a wait longer than the lease: only the heartbeat keeps them.
    async with make(lease_timeout=3.0) as backend:
        backend.queue.limit_running_per_owner(2)
        for n in range(4):
            await backend.queue.enqueue(_record("alice", n))
        for n in range(4, 6):
            await backend.queue.enqueue(_record("bob", n))
        first = await backend.queue.lease_many(3)
        assert [(lease.record.owner, lease.record.id) for lease in first] == [
            ("alice", "task-0"),
            ("bob", "task-4"),
            ("alice", "task-1"),
        ]
        await anyio.sleep(3.5)
        rest = await backend.queue.lease_many(10)
        assert [lease.record.id for lease in rest] == ["task-5"]  # alice at her cap of 2; none taken over
        assert (await backend.queue.statistics()).running == 4


async def test_writes_go_on_once_the_control_connection_is_back(make: Make) -> None:
    async with make(pool_size=2) as backend:
        await backend.queue.enqueue(_record(n=1))
        pool = backend._pool
        await pool.wait(timeout=PATIENCE)  # the pool's connections are all open
        async with pool.connection() as first, pool.connection() as second:
            pooled = [first.info.backend_pid, second.info.backend_pid]
        # a restart, in its order: every pooled connection is dead before the listening ones
        # come back (pg_terminate_backend only asks: wait until they are gone)
        _sql("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", pooled)
        with anyio.fail_after(PATIENCE):
            while _sql("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", pooled):
                await anyio.sleep(0.05)
        cut = _sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cut[0][0] >= 1  # the listening connection
        # the listening connection comes back and has the pool's idle connections checked
        with anyio.fail_after(PATIENCE):
            while pool.get_stats().get("connections_lost", 0) < 1:
                await anyio.sleep(0.05)
        await backend.queue.enqueue(_record(n=2))  # a write: not tried again, so it must find a live connection
        assert [r.id for r in await backend.queue.list_by_owner("alice")] == ["task-2", "task-1"]
