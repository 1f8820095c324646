"""What only the Redis backend does: leases that expire, fencing, dead letters, pub/sub
recovery, outages. Against a real Redis; each test under its own key prefix."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import redis

from progressq.backends.redis import RedisBackend
from progressq.contracts import Backend, Lease, TaskRecord
from progressq.errors import BackendUnavailable, ConfigurationError
from progressq.testing import RecordingSink
from tests.redis_support import REDIS_URL, free_port, private_redis, redis_backends
from tests.redis_support import MakeRedisBackend as Make
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


@pytest.fixture
def make() -> Iterator[Make]:
    """Backends on the shared Redis under one fresh prefix, deleted afterwards."""
    with redis_backends("backend") as factory:
        yield factory


def _record(owner: str = "alice", n: int = 0) -> TaskRecord:
    return TaskRecord(id=f"task-{n}", kind="work", name=f"task {n}", owner=owner)


async def _lease_within(backend: Backend, seconds: float) -> Lease | None:
    with anyio.move_on_after(seconds):
        return await backend.queue.lease()
    return None


async def _submit(backend: Backend, record: TaskRecord) -> None:
    """Queue ``record`` and announce it (``taskQueued``), as the hub's submit does."""
    assert await backend.enqueue_and_announce(record, max_unfinished=None) is None


async def _publish(backend: Backend, record: TaskRecord) -> int:
    event = await backend.registry.publish(record.owner, "taskProgress", record.id, record.revision, record.view_json())
    return event.seq


def _view(event: Any) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.json.decode(event.task_json)
    return view


async def test_a_dead_workers_task_is_reclaimed_and_its_writes_fenced(make: Make) -> None:
    async with make(lease_timeout=0.5) as observer:
        sink = RecordingSink()
        await observer.registry.attach("alice", sink)
        await _submit(observer, _record())
        async with make(lease_timeout=0.5) as dying:
            first = await dying.queue.lease()
            running = first.record.evolve(status="running", progress=40.0)
            assert await dying.queue.save(first, running)
            assert await _publish(dying, running) == 2  # 1: the enqueue announced it
            in_flight = running.evolve(progress=60.0)
            assert await dying.queue.save(first, in_flight)
            # stalls here, between saving and publishing
        # the dying worker's heartbeats stopped with it: after lease_timeout another takes over
        async with make(lease_timeout=0.5) as rescuer:
            second = await _lease_within(rescuer, PATIENCE)
            assert second is not None
            assert second.record.id == first.record.id
            assert second.record.attempt == 2
            assert second.record.progress == 60.0  # the stored view; the engine resets it
            # everything the first attempt still tries is refused, its in-flight event included
            assert await _publish(observer, in_flight) == 0
            late = in_flight.evolve(progress=90.0)
            assert not await observer.queue.save(first, late)
            assert not await observer.queue.extend(first)
            assert not await observer.queue.release(first, late.evolve(status="queued"))
            await observer.queue.finish(first)  # a stale ack must not end the new attempt
            assert await rescuer.queue.extend(second)
            restarted = second.record.evolve(status="running", progress=0.0)
            assert await rescuer.queue.save(second, restarted)
            assert await _publish(rescuer, restarted) == 3
            await sink.wait_count(3)
            await anyio.sleep(0.2)
            assert [(e.seq, _view(e)["attempt"], _view(e)["progress"]) for e in sink.events] == [
                (1, 0, 0.0),
                (2, 1, 40.0),
                (3, 2, 0.0),
            ]


async def test_a_busy_worker_takes_over_a_dead_workers_task_behind_its_own(make: Make) -> None:
    """The takeover scan starts over where the pending entries are younger than a lease (none
    of them can have expired yet), so that it does not chase the new ones a busy worker adds;
    an entry of a dead worker behind many live ones is still reached once they are a lease old."""
    async with make(lease_timeout=0.5) as busy:
        for n in range(30):
            await _submit(busy, _record(owner=f"user-{n}", n=n))
        assert len(await busy.queue.lease_many(30)) == 30  # held: kept alive by the heartbeat
        async with make(lease_timeout=0.5) as dying:
            await _submit(dying, _record(owner="dead", n=1000))
            abandoned = await dying.queue.lease()
        # the dying worker's heartbeats stopped; the busy one goes on taking new tasks
        n = 30
        with anyio.fail_after(PATIENCE):
            while True:
                await _submit(busy, _record(owner=f"user-{n}", n=n))
                n += 1
                taken = [lease.record.id for lease in await busy.queue.lease_many(5)]
                if abandoned.record.id in taken:
                    break
        stored = await busy.queue.get(abandoned.record.id)
        assert stored is not None
        assert stored.attempt == 2


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
        await _submit(observer, record)
        for attempt in (1, 2):  # two workers take it and die
            async with make(lease_timeout=0.3, max_deliveries=2) as doomed:
                lease = await _lease_within(doomed, PATIENCE)
                assert lease is not None
                assert lease.record.attempt == attempt
        async with make(lease_timeout=0.3, max_deliveries=2) as third:
            assert await _lease_within(third, 2.0) is None  # taken, found hopeless, not handed out
        stored = await observer.queue.get(record.id)
        assert stored is not None
        assert stored.status == "failed"
        assert stored.finished_at is not None
        assert stored.error is not None
        assert "gave up after 2 deliveries" in stored.error
        await sink.wait_count(2)
        queued, event = sink.events  # the enqueue announced it; then the dead letter
        assert _view(queued)["status"] == "queued"
        assert _view(event)["status"] == "failed"
        assert _view(event)["error"] == stored.error
        assert (await observer.queue.statistics()).running == 0


async def test_a_finished_task_whose_worker_died_before_publishing_is_published_once(make: Make) -> None:
    async with make(lease_timeout=0.3) as observer:
        sink = RecordingSink()
        await observer.registry.attach("alice", sink)
        await _submit(observer, _record())
        async with make(lease_timeout=0.3) as dying:
            lease = await dying.queue.lease()
            done = lease.record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
            assert await dying.queue.save(lease, done)
            # dies here: neither published nor acknowledged
        async with make(lease_timeout=0.3) as rescuer:
            assert await _lease_within(rescuer, 2.0) is None  # nothing to run again
        await sink.wait_count(2)
        assert await _publish(observer, done) == 0  # the late original publish is a duplicate now
        await anyio.sleep(0.2)
        assert [_view(e)["status"] for e in sink.events] == ["queued", "completed"]


async def test_publish_drops_stale_and_repeated_revisions(make: Make) -> None:
    async with make() as backend:
        record = _record()
        await _submit(backend, record)  # announces it: seq 1
        assert await _publish(backend, record) == 0  # the same revision again
        lease = await backend.queue.lease()
        assert await _publish(backend, record) == 0  # older than the stored revision
        running = lease.record.evolve(status="running")
        assert await backend.queue.save(lease, running)
        assert await _publish(backend, running) == 2
        # events about things that are not stored tasks are never dropped
        for n in range(3):
            assert (await backend.registry.publish("alice", "taskProgress", "not-a-task", 1, b"{}")).seq == 3 + n


async def test_each_process_subscribes_only_to_identities_it_holds(make: Make) -> None:
    async with make() as one, make() as two:
        client = one.client
        sinks = [RecordingSink() for _ in range(3)]
        await one.registry.attach("alice", sinks[0])
        await one.registry.attach("alice", sinks[1])
        await two.registry.attach("bob", sinks[2])
        channels = sorted(c.decode() for c in await client.pubsub_channels(f"{one.prefix}:events:*"))
        assert channels == [f"{one.prefix}:events:alice", f"{one.prefix}:events:bob"]
        counts = dict(await client.pubsub_numsub(*channels))
        assert counts == {c.encode(): 1 for c in channels}  # one subscription per process, not per sink
        await one.registry.detach("alice", sinks[0])
        assert len(await client.pubsub_channels(f"{one.prefix}:events:*")) == 2
        await one.registry.detach("alice", sinks[1])
        with anyio.fail_after(PATIENCE):
            while len(await client.pubsub_channels(f"{one.prefix}:events:*")) != 1:
                await anyio.sleep(0.05)


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


async def test_redis_down_gives_clear_errors_and_a_waiting_worker() -> None:
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix="pqtest:down")
    async with backend:
        assert await backend.ping() is False
        with pytest.raises(BackendUnavailable):
            await backend.queue.enqueue(_record())
        with pytest.raises(BackendUnavailable):
            await backend.registry.attach("alice", RecordingSink())
        assert backend.registry.statistics().connections == 0
        with pytest.raises(BackendUnavailable):
            await backend.registry.events_after("alice", 0)
        assert await _lease_within(backend, 1.0) is None  # waits for Redis instead of raising


def test_from_url_and_configuration() -> None:
    backend = RedisBackend.from_url("redis://user:s3cret@example.invalid:6380/2", prefix="app")
    assert "s3cret" not in backend.url
    assert "s3cret" not in repr(backend)
    assert backend.url == "redis://user:***@example.invalid:6380/2"
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url("http://localhost")
    with pytest.raises(ConfigurationError):
        RedisBackend(redis.asyncio.Redis(decode_responses=True))
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url(REDIS_URL, prefix="has space")
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url(REDIS_URL, lease_timeout=0)


@asynccontextmanager
async def _publisher_and_listener(url: str) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    async with (
        RedisBackend.from_url(url, prefix="pqtest:pubsub") as listener,
        RedisBackend.from_url(url, prefix="pqtest:pubsub") as publisher,
    ):
        yield listener, publisher


async def test_killed_pubsub_connection_resumes_without_gaps() -> None:
    with private_redis() as server:
        admin = redis.Redis.from_url(server.url)
        async with _publisher_and_listener(server.url) as (listener, publisher):
            identities = ["alice", "bob", "carol"]
            sinks = {identity: RecordingSink() for identity in identities}
            for identity, sink in sinks.items():
                await listener.registry.attach(identity, sink)
            total = 300
            killed = 0
            for n in range(1, total + 1):
                await publisher.registry.publish(identities[n % 3], "taskProgress", "t", n, b'{"n":%d}' % n)
                if n % 75 == 0:
                    killed += int(admin.execute_command("CLIENT KILL TYPE pubsub"))
                await anyio.sleep(0.002)
            assert killed >= 3  # the listener's connection really went away, again and again
            for identity, sink in sinks.items():
                await sink.wait_count(total // 3)
                assert sink.seqs == list(range(1, total // 3 + 1)), identity
                assert all(int(_view(e)["n"]) % 3 == identities.index(identity) for e in sink.events)
            # live again: the next event arrives without help
            await publisher.registry.publish("alice", "taskProgress", "t", 999, b'{"n":999}')
            await sinks["alice"].wait_count(total // 3 + 1)
        admin.close()


async def test_workers_and_listeners_recover_when_redis_comes_back(tmp_path: Any) -> None:
    """Redis restarts (with its data) under a running hub: tasks finish, events arrive."""
    from progressq import Hub, TaskContext

    with private_redis(data_dir=tmp_path) as server:
        backend = RedisBackend.from_url(server.url, prefix="pqtest:outage", lease_timeout=1.0)
        hub = Hub(backend, secret="outage-test-secret-0123", concurrency=4, progress_interval=0.0)

        @hub.task("steps")
        async def steps(ctx: TaskContext) -> None:
            for step in range(1, 21):
                await anyio.sleep(0.1)
                await ctx.report(step * 5)

        async with hub:
            sink = RecordingSink()
            await hub.registry.attach("alice", sink)
            ids = [(await hub.submit("steps", owner="alice")).id for _ in range(6)]
            await sink.wait_for(lambda events: any(_view(e)["progress"] >= 20 for e in events))
            server.kill()
            assert await hub.healthy() is False
            await anyio.sleep(1.5)
            server.start()
            with anyio.fail_after(PATIENCE):
                while True:
                    records = [await hub.get(task_id, owner="alice") for task_id in ids]
                    if all(r.status == "completed" for r in records):
                        break
                    await anyio.sleep(0.2)
            assert await hub.healthy() is True
            # the client's view ends with each task completed, seq without gaps
            await sink.wait_for(lambda events: _last_status(events, ids) == ["completed"] * len(ids), 30)
            assert sink.seqs == list(range(1, len(sink.seqs) + 1))


async def test_once_ping_says_redis_is_back_a_client_can_attach() -> None:
    """Health is a readiness probe: once it says Redis is back, a new client is not refused
    because the pub/sub connection still waits out its reconnect backoff (which grows to
    seconds during a long outage)."""
    with private_redis() as server:
        async with RedisBackend.from_url(server.url, prefix="pqtest:ready") as backend:
            await backend.registry.attach("alice", RecordingSink())  # the pub/sub connection is up
            server.kill()
            with anyio.fail_after(PATIENCE):
                while await backend.ping():
                    await anyio.sleep(0.05)
            await anyio.sleep(4.0)  # long enough for the backoff to reach its longest
            server.start()
            with anyio.fail_after(PATIENCE):
                while not await backend.ping():
                    await anyio.sleep(0.05)
            await backend.registry.attach("bob", RecordingSink())  # not refused as unavailable


def _last_status(events: list[Any], ids: list[str]) -> list[str]:
    last: dict[str, str] = {}
    for event in events:
        last[event.task_id] = _view(event)["status"]
    return [last.get(task_id, "") for task_id in ids]


async def test_workers_carry_on_after_redis_lost_its_data(make: Make) -> None:
    """Every key gone under running workers (a restart without persistence): no crash, the
    lost tasks write nothing, and new tasks run."""
    from progressq import Hub, TaskContext

    hub = Hub(make(lease_timeout=1.0), secret="data-loss-test-secret-01", concurrency=2, progress_interval=0.0)

    @hub.task("steps")
    async def steps(ctx: TaskContext) -> None:
        for step in range(1, 11):
            await anyio.sleep(0.05)
            await ctx.report(step * 10)

    async with hub:
        backend = hub.backend
        assert isinstance(backend, RedisBackend)
        lost = await hub.submit("steps", owner="alice", payload={})
        with anyio.fail_after(PATIENCE):
            while (await hub.get(lost.id, owner="alice")).status != "running":
                await anyio.sleep(0.02)
        keys = [key async for key in backend.client.scan_iter(match=f"{backend.prefix}:*")]
        await backend.client.delete(*keys)
        await anyio.sleep(1.0)
        assert await backend.queue.get(lost.id) is None  # the lost task's worker wrote nothing more
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        fresh = await hub.submit("steps", owner="alice", payload={})
        await sink.wait_for(lambda events: any(_view(e)["status"] == "completed" for e in events), 20)
        assert (await hub.get(fresh.id, owner="alice")).status == "completed"
        assert sink.seqs == list(range(1, len(sink.seqs) + 1))


async def test_lease_many_takes_at_most_the_free_slots_and_holds_each_lease(make: Make) -> None:
    async with make(lease_timeout=0.6) as backend:
        for n in range(5):
            await backend.queue.enqueue(_record(n=n))
        first = await backend.queue.lease_many(3)
        assert len(first) == 3
        assert len({lease.record.id for lease in first}) == 3
        assert all(lease.record.attempt == 1 for lease in first)
        await anyio.sleep(1.2)  # two lease timeouts: only the heartbeat keeps them
        rest = await backend.queue.lease_many(10)
        assert sorted(lease.record.id for lease in rest) == ["task-3", "task-4"]  # none taken over
        assert (await backend.queue.statistics()).running == 5


async def test_save_and_publish_is_fenced_and_acknowledges_only_with_finish(make: Make) -> None:
    async with make(lease_timeout=0.3) as backend:
        sink = RecordingSink()
        await backend.registry.attach("alice", sink)
        await _submit(backend, _record())
        lease = await backend.queue.lease()
        stale = Lease(msgspec.structs.replace(lease.record, attempt=lease.record.attempt - 1), lease.token)
        done = lease.record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
        assert not await backend.save_and_publish(stale, done, done.view_json(), finish=True)
        running = lease.record.evolve(status="running")
        assert await backend.save_and_publish(lease, running, running.view_json())
        done = running.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
        assert await backend.save_and_publish(lease, done, done.view_json(), finish=True)
        await sink.wait_count(3)
        assert [_view(e)["status"] for e in sink.events] == ["queued", "running", "completed"]
        assert sink.seqs == [1, 2, 3]
        pending = await backend.client.xpending(f"{backend.prefix}:queue", "workers")
        assert pending["pending"] == 0  # acknowledged with the terminal save
        assert (await backend.queue.statistics()).running == 0


async def test_a_cancel_asked_before_an_attempts_first_commit_is_told_again_by_that_commit_only(make: Make) -> None:
    # The worker may not listen for its task's cancel yet when it is asked between the take and
    # the attempt's first commit: that commit tells it again. A later report carries no status
    # (it is stored already) and tells nothing.
    async with make() as backend:
        listener = backend.client.pubsub()
        await listener.subscribe(f"{backend.prefix}:cancel")
        told: list[bytes] = []

        async def heard(count: int) -> None:
            with anyio.fail_after(PATIENCE):
                while len(told) < count:
                    message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if message is not None:
                        told.append(message["data"])

        try:
            await _submit(backend, _record())
            lease = await backend.queue.lease()
            assert lease is not None
            outcome = await backend.queue.request_cancel("task-0", "alice")
            assert outcome is not None
            assert outcome.result == "requested"
            await heard(1)
            running = lease.record.evolve(status="running")
            assert await backend.save_and_publish(lease, running, running.view_json())
            await heard(2)
            for percent in (10.0, 20.0):
                running = running.evolve(progress=percent)
                assert await backend.save_and_publish(lease, running, running.view_json())
            done = running.evolve(status="failed", finished_at=datetime.now(UTC))
            assert await backend.save_and_publish(lease, done, done.view_json(), finish=True)  # told nothing either
            stored = await backend.queue.get("task-0")
            assert stored is not None
            assert (stored.status, stored.progress) == ("failed", 20.0)
            assert await backend.client.hget(f"{backend.prefix}:task:task-0", "status") == b"failed"
            # a message of our own, after the commits: what they told arrived before it
            await backend.client.publish(f"{backend.prefix}:cancel", "end")
            await heard(3)
            while told[-1] != b"end":
                await heard(len(told) + 1)
            assert told == [b"task-0", b"task-0", b"end"]
        finally:
            await listener.aclose()


async def test_the_seq_and_history_expire_from_history_ttl_to_a_tenth_more_after_the_last_event(make: Make) -> None:
    # A commit sets them to expire (history_ttl + refresh) only when its task has not for
    # `refresh` seconds (a tenth of history_ttl here), and at the task's end.
    async with make(history_ttl=100) as backend:
        client = backend.client
        keys = [f"{backend.prefix}:seq:alice", f"{backend.prefix}:recent:alice"]
        task = f"{backend.prefix}:task:task-0"

        async def ttls() -> list[int]:
            return [await client.ttl(key) for key in keys]

        await _submit(backend, _record())
        assert all(100 <= ttl <= 110 for ttl in await ttls())
        lease = await backend.queue.lease()
        record = lease.record.evolve(status="running")
        assert await backend.save_and_publish(lease, record, record.view_json())
        assert all(100 <= ttl <= 110 for ttl in await ttls())
        for key in keys:  # as if 5 s passed since: set a moment ago, not set again
            await client.expire(key, 105)
        record = record.evolve(progress=10.0)
        assert await backend.save_and_publish(lease, record, record.view_json())
        assert all(100 <= ttl <= 105 for ttl in await ttls())
        # as if 60 s passed since this task set them (it is due to again now): set again,
        # history_ttl from now at least
        now = int((await client.time())[0])
        await client.hset(task, "renew", str(now))
        for key in keys:
            await client.expire(key, 50)
        record = record.evolve(progress=20.0)
        assert await backend.save_and_publish(lease, record, record.view_json())
        assert all(100 <= ttl <= 110 for ttl in await ttls())
        for key in keys:
            await client.expire(key, 105)
        done = record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
        assert await backend.save_and_publish(lease, done, done.view_json(), finish=True)
        assert all(106 <= ttl <= 110 for ttl in await ttls())  # set at the end, whenever last
        events = await backend.registry.events_after("alice", 0)
        assert events is not None
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]


async def test_batched_script_calls_recover_when_redis_forgot_the_scripts(make: Make) -> None:
    from progressq import Hub, TaskContext

    hub = Hub(make(), secret="script-flush-test-secret-1", concurrency=8, progress_interval=0.0)

    @hub.task("quick")
    async def quick(ctx: TaskContext) -> None:
        await ctx.report(50)

    async with hub:
        backend = hub.backend
        assert isinstance(backend, RedisBackend)
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        await backend.client.script_flush()
        async with anyio.create_task_group() as group:  # concurrent submits: one batch
            for _ in range(20):
                group.start_soon(lambda: hub.submit("quick", owner="alice"))
        await sink.wait_for(lambda events: sum(_view(e)["status"] == "completed" for e in events) == 20, 20)
        assert sink.seqs == list(range(1, len(sink.seqs) + 1))
        assert len(sink.seqs) == 20 * 4  # queued, running, progress, completed: each once


async def test_calls_made_while_batches_are_out_go_together_when_one_returns() -> None:
    # Group commit: with one batch allowed out, calls spread over many turns of the event
    # loop travel in a few batches, not one round trip each; every caller gets its own
    # answer, in order.
    from redis.asyncio import Redis

    from progressq.backends.redis._batch import _Batcher

    client = Redis.from_url(REDIS_URL)
    echo = client.register_script("return ARGV")
    batches = 0

    async def send(items: Sequence[int]) -> Any:
        nonlocal batches
        batches += 1
        return await echo(keys=[], args=items)

    batcher = _Batcher(send, in_flight=1)
    answers: dict[int, bytes] = {}

    async def one(n: int) -> None:
        answers[n] = await batcher.call(n)

    try:
        async with anyio.create_task_group() as group:
            for n in range(200):
                group.start_soon(one, n)
                if n % 10 == 0:
                    await anyio.lowlevel.checkpoint()  # the calls arrive over 20 turns of the loop
        await batcher.drain()
    finally:
        await client.aclose()
    assert answers == {n: str(n).encode() for n in range(200)}
    assert batches <= 12  # 20 turns; without group commit, about one batch per turn


async def test_an_error_in_one_batched_call_reaches_only_that_call(make: Make) -> None:
    # Submits of several owners made at once go to Redis as one script call; one of them
    # fails in Redis (its owner's waiting list is a key of the wrong type): its caller gets
    # the error, and every other submit of the batch is queued and announced.
    async with make() as backend:
        await backend.client.set(f"{backend.prefix}:waiting:mallory", "not a list")
        owners = ["alice", "mallory", "bob", "carol"]
        outcomes: dict[str, Any] = {}

        async def submit(owner: str) -> None:
            record = _record(owner, owners.index(owner))
            try:
                outcomes[owner] = await backend.enqueue_and_announce(record, max_unfinished=None)
            except Exception as exc:
                outcomes[owner] = exc

        sent: list[int] = []
        send = backend.queue._calls[0].send

        def counting_send(rows: Any) -> Any:
            sent.append(len(rows))
            return send(rows)

        backend.queue._batchers[0]._send = counting_send
        async with anyio.create_task_group() as group:
            for owner in owners:
                group.start_soon(submit, owner)
        assert sent == [4]  # one script call for the four
        assert isinstance(outcomes.pop("mallory"), redis.ResponseError)
        assert outcomes == {"alice": None, "bob": None, "carol": None}
        for owner in ["alice", "bob", "carol"]:
            assert await backend.registry.current_seq(owner) == 1  # announced
            assert [r.owner for r in await backend.queue.list_by_owner(owner)] == [owner]
        leases = await backend.queue.lease_many(10)
        assert sorted(lease.record.owner for lease in leases) == ["alice", "bob", "carol"]


def test_the_rows_are_laid_out_as_the_script_reads_them() -> None:
    # The batched rows are positional: the script's ROW lines and _calls.py's layouts must
    # list the same fields in the same order, and the rows built must have that many fields.
    import re
    from importlib.resources import files

    from progressq.backends.redis._calls import _ROW_LAYOUTS, _SETTINGS, _SHARD_KEYS, _Calls
    from progressq.backends.redis._common import _Keys

    script = files("progressq.backends.redis").joinpath("scripts", "operations.lua").read_text(encoding="utf-8")
    in_script = {op: tuple(fields.split()) for op, fields in re.findall(r"^-- ROW (\w+): (.+)$", script, re.M)}
    assert in_script == _ROW_LAYOUTS
    for name, listed in [("SHARD_KEYS", _SHARD_KEYS), ("SETTINGS", _SETTINGS)]:
        in_lua = re.search(rf"^-- {name}: (.+)$", script, re.M)
        assert in_lua is not None
        assert tuple(in_lua.group(1).split()) == listed
    # the script steps from row to row by each operation's count of keys and of other fields
    in_sizes: dict[str, tuple[int, ...]] = {}
    for table in ("ROW_KEYS", "ROW_FIELDS"):
        sizes = re.search(rf"^local {table} = \{{(.+)\}}$", script, re.M)
        assert sizes is not None
        for op, size in re.findall(r"(\w+) = (\d+)", sizes.group(1)):
            in_sizes[op] = (*in_sizes.get(op, ()), int(size))
    layouts = {
        op: (fields.index("history"), len(fields) - 1 - fields.index("history")) for op, fields in _ROW_LAYOUTS.items()
    }
    assert in_sizes == layouts
    # the progress script reads progress rows without their names, stepping as the whole one does
    progress = files("progressq.backends.redis").joinpath("scripts", "progress.lua").read_text(encoding="utf-8")
    in_progress = re.search(r"^-- PROGRESS: (.+)$", progress, re.M)
    assert in_progress is not None
    assert tuple(in_progress.group(1).split()) == _ROW_LAYOUTS["progress"][1:]
    keys, fields = layouts["progress"]
    assert f"for at = 0, #ARGV - 1, {fields} do" in progress
    assert f"key = key + {keys}\n" in progress
    calls = _Calls(redis.Redis(), _Keys("pq"), capacity=0, retention=1, history_size=1, history_ttl=1)
    record = _record()
    lease = Lease(record, "1-0")
    rows = [
        calls.commit_row(lease, record, record.view_json(), finish=False),  # a progress row
        calls.commit_row(lease, record, record.view_json(), finish=True),  # a commit row
        calls.submit_row(record, None),
        calls.enqueue_row(record),
    ]
    assert [op for op, _, _ in rows] == ["progress", "commit", "submit", "enqueue"]
    # one function reads both: a progress row's fields are a commit row's first ones
    progress_fields = _ROW_LAYOUTS["progress"][4:]
    assert _ROW_LAYOUTS["commit"][6 : 6 + len(progress_fields)] == progress_fields
    for op, keys, fields in rows:
        assert 1 + len(keys) + len(fields) == len(_ROW_LAYOUTS[op])
        assert _ROW_LAYOUTS[op][len(keys)] == "history"  # the keys come first, history last
        assert all(isinstance(field, str | bytes) for field in fields)  # ARGV: strings only (flags '1'/'')


def test_from_url_clients_pack_commands_in_c_exactly_as_redis_py_does() -> None:
    from redis.asyncio import Connection, Redis

    from progressq.backends.redis._packing import pack_in_c

    client = Redis.from_url(REDIS_URL)
    assert pack_in_c(client)
    fast = client.connection_pool.connection_class()
    plain = Connection()
    for command in [
        ("EVALSHA", "0123abcd", 2, "pq:task:x", b"pq:\xffbytes", 17, -3, "caf\u00e9 \u2603", b""),
        ("CLIENT SETINFO", "LIB-NAME", "progressq"),
        (b"CLIENT KILL", b"TYPE", b"pubsub"),
        ("XREADGROUP", "GROUP", "workers", "c1", "COUNT", 32, "BLOCK", 1000, "STREAMS", "s", ">"),
    ]:
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))
    wrapped = client.connection_pool.connection_class
    assert pack_in_c(client)  # twice is harmless: not wrapped again
    assert client.connection_pool.connection_class is wrapped


async def test_a_flush_cancelled_before_it_started_strands_no_call() -> None:
    import asyncio

    from redis.asyncio import Redis

    from progressq.backends.redis._batch import _Batcher

    client = Redis.from_url(REDIS_URL)
    echo = client.register_script("return ARGV")

    async def send(items: Sequence[int]) -> Any:
        return await echo(keys=[], args=items)

    batcher = _Batcher(send)
    try:
        first = asyncio.ensure_future(batcher.call(1))
        await asyncio.sleep(0)  # the call waits; its flush is scheduled, not started
        assert batcher._scheduled is not None
        batcher._scheduled.cancel()  # e.g. the loop's shutdown reached it first
        assert await asyncio.wait_for(first, 2) == b"1"
        assert await asyncio.wait_for(batcher.call(2), 2) == b"2"
        await batcher.drain()
    finally:
        await client.aclose()


@pytest.mark.parametrize(("first", "then"), [(4, 1), (1, 4), (4, 2)])
async def test_data_of_another_number_of_shards_is_refused(make: Make, first: int, then: int) -> None:
    """One shard (keys without hash tags) and several (tagged keys) share one record of the
    count, so neither opens on the other's data and finds no tasks there."""
    async with make(shards=first) as backend:
        await _submit(backend, _record())
    with pytest.raises(ConfigurationError, match=f"{first} shards"):
        async with make(shards=then):
            pass
    async with make(shards=first) as backend:  # the same count still opens, and sees its task
        assert await backend.queue.get("task-0") is not None


async def test_a_save_cut_off_after_its_lease_was_let_go_fails_as_an_outage() -> None:
    """A worker's last save waits on a Redis that then dies; meanwhile the heartbeat found the
    lease taken over and let go of it. The save fails as an outage (``BackendUnavailable``,
    which the worker logs once and outlives), not with an error of the backend's own making."""
    with private_redis() as server:
        async with RedisBackend.from_url(server.url, prefix="pqtest:cutoff", lease_timeout=60.0) as backend:
            await _submit(backend, _record())
            lease = await backend.queue.lease()
            done = lease.record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)  # the save goes out and waits for its answer
            failures: list[BaseException] = []

            async def save() -> None:
                try:
                    await backend.save_and_publish(lease, done, done.view_json(), finish=True)
                except Exception as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(save)
                with anyio.fail_after(PATIENCE):
                    while not backend.queue._batchers[0]._flushes:  # on its way, its lease read before
                        await anyio.sleep(0.01)
                backend.queue._drop(lease)  # as the heartbeat does with a lease taken over
                server.kill()
            assert len(failures) == 1
            assert isinstance(failures[0], BackendUnavailable), repr(failures[0])


async def test_a_report_of_progress_alone_is_stored_as_a_tick_that_every_reader_lays_over_the_record(
    make: Make,
) -> None:
    # A report that changes only the progress and message stores those (the hash's `tick`), not
    # the whole record: the task's reads, its owner's list and a takeover's lease all see them;
    # a report that changes anything else, and the task's end, store the record whole again.
    async with make(lease_timeout=0.5) as observer:
        await _submit(observer, _record())
        task_key = f"{observer.prefix}:task:task-0"
        async with make(lease_timeout=0.5) as dying:
            first = await dying.queue.lease()
            assert first is not None
            running = first.record.evolve(status="running", started_at=datetime.now(UTC))
            assert await dying.save_and_publish(first, running, running.view_json())
            report = running.evolve(progress=60.0, message="most of it")
            assert await dying.save_and_publish(first, report, report.view_json())
            stored = msgspec.json.decode(await observer.client.hget(task_key, "data"))
            assert (stored["progress"], stored["message"]) == (0.0, "")  # not written whole
            assert await observer.client.hget(task_key, "tick") is not None
            for read in [await observer.queue.get("task-0"), *(await observer.queue.list_by_owner("alice"))]:
                assert read is not None
                assert (read.progress, read.message, read.revision) == (60.0, "most of it", report.revision)
                assert read.started_at == running.started_at
            # stalls here; after lease_timeout another worker takes over, from the last report
        async with make(lease_timeout=0.5) as rescuer:
            second = await _lease_within(rescuer, PATIENCE)
            assert second is not None
            assert (second.record.attempt, second.record.progress, second.record.message) == (2, 60.0, "most of it")
            late = report.evolve(progress=90.0)  # the first attempt's next report is fenced out
            assert not await observer.save_and_publish(first, late, late.view_json())
            restarted = second.record.evolve(status="running", progress=0.0, message="")
            assert await rescuer.save_and_publish(second, restarted, restarted.view_json())
            changed = restarted.evolve(progress=10.0, context={"step": "two"})  # not progress alone
            assert await rescuer.save_and_publish(second, changed, changed.view_json())
            assert msgspec.json.decode(await observer.client.hget(task_key, "data"))["context"] == {"step": "two"}
            report = changed.evolve(progress=50.0, message="half")
            assert await rescuer.save_and_publish(second, report, report.view_json())
            read = await observer.queue.get("task-0")
            assert read is not None
            assert (read.progress, read.message, read.context) == (50.0, "half", {"step": "two"})
            done = report.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
            assert await rescuer.save_and_publish(second, done, done.view_json(), finish=True)
            read = await observer.queue.get("task-0")
            assert read is not None
            assert (read.status, read.progress, read.message) == ("completed", 100.0, "half")


async def test_a_task_stored_by_the_version_before_ticks_or_with_an_older_tick_reads_as_its_record(
    make: Make,
) -> None:
    # Upgrading: a hash without a tick (every task the version before stored) reads as its
    # record; a tick older than the record (a whole write after it, by either version) is ignored.
    async with make() as backend:
        await _submit(backend, _record())
        task_key = f"{backend.prefix}:task:task-0"
        record = await backend.queue.get("task-0")
        assert record is not None
        whole = record.evolve(status="running", progress=20.0, message="as stored before")
        await backend.client.hset(task_key, mapping={"data": msgspec.json.encode(whole), "rev": whole.revision})
        read = await backend.queue.get("task-0")
        assert read is not None
        assert (read.progress, read.message) == (20.0, "as stored before")
        older = msgspec.json.encode((whole.revision - 1, 90.0, "an older tick"))
        await backend.client.hset(task_key, "tick", older)
        read = await backend.queue.get("task-0")
        assert read is not None
        assert (read.progress, read.message) == (20.0, "as stored before")
        lease = await backend.queue.lease()
        assert lease is not None
        assert (lease.record.progress, lease.record.message) == (20.0, "as stored before")


async def test_a_tick_this_version_cannot_read_leaves_the_task_readable(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    # A later version's longer tick still gives its first three items; a damaged one is left
    # out (the task reads as its last whole record, logged once), never an error for get, list
    # or the take that would retry the task into the dead letters.
    async with make() as backend:
        await _submit(backend, _record())
        task_key = f"{backend.prefix}:task:task-0"
        record = await backend.queue.get("task-0")
        assert record is not None
        newer = record.revision + 1
        await backend.client.hset(task_key, "tick", msgspec.json.encode((newer, 40, "later", {"eta": 3})))
        read = await backend.queue.get("task-0")
        assert read is not None
        assert (read.progress, read.message) == (40.0, "later")
        await backend.client.hset(task_key, "tick", b'{"not": "a tick"')
        with caplog.at_level(logging.WARNING, logger="progressq.redis"):
            for _ in range(3):
                read = await backend.queue.get("task-0")
                assert read is not None
                assert (read.progress, read.message) == (record.progress, record.message)
            (listed,) = await backend.queue.list_by_owner(record.owner)
            assert listed.progress == record.progress
            lease = await backend.queue.lease()
        assert lease is not None
        assert lease.record.id == "task-0"
        assert sum("unreadable" in r.getMessage() for r in caplog.records) == 1
