"""The Redis queue's work that one script call does once for all of its tasks (the shard's
counts, wake-up tokens, acknowledgements), and the submit's counting of its owner's limit.
Against a real Redis; each test under its own key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import redis

from progressq.backends.redis import RedisBackend
from progressq.contracts import TaskRecord
from progressq.errors import ConfigurationError
from tests.redis_support import REDIS_URL, delete_prefix, prefixed, redis_backends
from tests.redis_support import MakeRedisBackend as Make

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


@pytest.fixture
def make() -> Iterator[Make]:
    """Backends on the shared Redis under one fresh prefix, deleted afterwards."""
    with redis_backends("batched") as factory:
        yield factory


def _record(owner: str, n: int) -> TaskRecord:
    return TaskRecord(id=f"task-{owner}-{n}", kind="work", name=f"task {n}", owner=owner)


@asynccontextmanager
async def _deleted(prefix: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        delete_prefix(prefix)


def _count_sends(backend: RedisBackend) -> list[int]:
    """The number of rows of each batched script call the backend's shard sends from now on."""
    sent: list[int] = []
    send = backend.queue._calls[0].send

    def counting_send(rows: Any) -> Any:
        sent.append(len(rows))
        return send(rows)

    backend.queue._batchers[0]._send = counting_send
    return sent


async def test_a_batch_of_submits_and_of_ends_counts_wakes_and_acknowledges_every_task(make: Make) -> None:
    async with make() as backend:
        client, queue = backend.client, backend.queue
        owners = [f"owner{n}" for n in range(10)]
        sent = _count_sends(backend)
        async with anyio.create_task_group() as group:
            for n, owner in enumerate(owners):
                group.start_soon(lambda r: backend.enqueue_and_announce(r, max_unfinished=None), _record(owner, n))
        assert sent == [10]  # one script call for the ten
        stats = await queue.statistics()
        assert (stats.queued, stats.running) == (10, 0)
        assert await client.llen(f"{backend.prefix}:wake") == 10  # a token per task queued

        leases = await queue.lease_many(10)
        assert len(leases) == 10
        stats = await queue.statistics()
        assert (stats.queued, stats.running) == (0, 10)
        assert await client.hget(f"{backend.prefix}:running", "owner0") == b"1"

        async def end(lease: Any) -> None:
            done = lease.record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
            assert await backend.save_and_publish(lease, done, done.view_json(), finish=True)

        sent.clear()
        async with anyio.create_task_group() as group:
            for lease in leases:
                group.start_soon(end, lease)
        assert sent == [10]
        stats = await queue.statistics()
        assert (stats.queued, stats.running) == (0, 0)
        pending = await client.xpending(f"{backend.prefix}:queue", "workers")
        assert pending["pending"] == 0  # every entry of the batch acknowledged
        assert await client.xlen(f"{backend.prefix}:queue") == 0  # and deleted
        assert await client.hlen(f"{backend.prefix}:running") == 0


async def test_the_end_of_an_owners_task_at_its_cap_wakes_a_worker_for_its_next(make: Make) -> None:
    async with make() as backend:
        client, queue = backend.client, backend.queue
        queue.limit_running_per_owner(1)
        for n in range(2):
            await backend.enqueue_and_announce(_record("alice", n), max_unfinished=None)
        (lease,) = await queue.lease_many(5)  # the second waits: alice is at her cap
        await client.delete(f"{backend.prefix}:wake")
        done = lease.record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
        assert await backend.save_and_publish(lease, done, done.view_json(), finish=True)
        assert await client.llen(f"{backend.prefix}:wake") == 1
        (second,) = await queue.lease_many(5)
        assert second.record.id == "task-alice-1"


async def test_a_refused_submit_leaves_its_owners_count_of_unfinished_tasks_as_it_was(make: Make) -> None:
    async with make() as backend:
        client = backend.client
        unfinished = f"{backend.prefix}:unfinished"
        assert await backend.enqueue_and_announce(_record("alice", 0), max_unfinished=2) is None
        assert await backend.enqueue_and_announce(_record("alice", 1), max_unfinished=2) is None
        assert await backend.enqueue_and_announce(_record("alice", 2), max_unfinished=2) == 2  # at the limit
        assert await client.hget(unfinished, "alice") == b"2"
        with pytest.raises(ConfigurationError):  # the id is taken: refused after the count
            await backend.enqueue_and_announce(_record("alice", 1), max_unfinished=5)
        assert await client.hget(unfinished, "alice") == b"2"
        with pytest.raises(ConfigurationError):  # a first task refused: no count left behind
            taken = TaskRecord(id="task-alice-0", kind="work", name="again", owner="bob")
            await backend.enqueue_and_announce(taken, max_unfinished=5)
        assert await client.hget(unfinished, "bob") is None
        assert len(await backend.queue.list_by_owner("alice")) == 2


async def test_the_running_commit_leaves_the_expiry_its_submit_set(make: Make) -> None:
    # A submit's announcement sets the owner's seq and history to expire, and the task notes
    # when: its first commit, a moment later, does not set them again (two commands fewer).
    async with make(history_ttl=100) as backend:
        client = backend.client
        keys = [f"{backend.prefix}:seq:alice", f"{backend.prefix}:recent:alice"]
        await backend.enqueue_and_announce(_record("alice", 0), max_unfinished=None)
        assert await client.hget(f"{backend.prefix}:task:task-alice-0", "renew") is not None
        for key in keys:  # as if 5 s passed since the submit
            await client.expire(key, 105)
        lease = await backend.queue.lease()
        running = lease.record.evolve(status="running")
        assert await backend.save_and_publish(lease, running, running.view_json())
        assert all(100 <= ttl <= 105 for ttl in [await client.ttl(key) for key in keys])


async def test_a_batch_of_progress_rows_runs_in_a_script_of_its_own_each_row_on_its_own(make: Make) -> None:
    # A batch of progress rows only (running tasks' reports) goes to the progress script, whose
    # rows answer as the whole script's do: 1 stored and published, 0 fenced out, an error for
    # its row alone.
    async with make() as backend:
        client, queue = backend.client, backend.queue
        for owner in ("alice", "bob", "carol"):
            await backend.enqueue_and_announce(_record(owner, 0), max_unfinished=None)
        leases = sorted(await queue.lease_many(3), key=lambda lease: lease.record.owner)
        await client.hset(f"{backend.prefix}:task:task-bob-0", "attempt", "7")  # bob's lease was taken over
        await client.delete(f"{backend.prefix}:seq:carol")
        await client.hset(f"{backend.prefix}:seq:carol", "wrong", "type")  # carol's row fails midway
        calls = queue._calls[0]
        reports = [lease.record.evolve(status="running", progress=50.0) for lease in leases]
        rows = [
            calls.commit_row(lease, report, report.view_json(), finish=False)
            for lease, report in zip(leases, reports, strict=True)
        ]
        assert [op for op, _, _ in rows] == ["progress"] * 3
        assert await client.script_exists(calls.progress_script.sha) == [False]
        answers = await calls.send(rows)
        assert answers[:2] == [1, 0]
        assert isinstance(answers[2], redis.ResponseError)
        assert await client.script_exists(calls.progress_script.sha) == [True]
        alice, bob = await queue.get("task-alice-0"), await queue.get("task-bob-0")
        assert alice is not None
        assert bob is not None
        assert (alice.status, alice.progress) == ("running", 50.0)
        assert (bob.status, bob.progress) == ("queued", 0.0)  # fenced out: nothing stored
        assert await backend.registry.current_seq("alice") == 2  # announced, then this report
        assert await backend.registry.current_seq("bob") == 1  # nothing published


async def test_the_progress_script_reads_its_settings_back_whatever_the_prefix(make: Make) -> None:
    # The progress script has its shard's settings in its text. A prefix of quotes and Lua's
    # long brackets still names the cancel channel, and the task that a cancel told again names
    # (the task's key after the task prefix).
    with prefixed("batched") as base:
        prefix = base + "\"'%]]=--"
        async with RedisBackend.from_url(REDIS_URL, prefix=prefix) as backend, _deleted(prefix):
            listener = backend.client.pubsub()
            await listener.subscribe(f"{prefix}:cancel")
            await backend.enqueue_and_announce(_record("alice", 0), max_unfinished=None)
            lease = await backend.queue.lease()
            assert lease is not None
            await backend.client.hset(f"{prefix}:task:task-alice-0", "cancel", "1")  # asked before the first commit
            running = lease.record.evolve(status="running")
            assert await backend.save_and_publish(lease, running, running.view_json())
            with anyio.fail_after(10):
                while (message := await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)) is None:
                    pass
            assert message["data"] == b"task-alice-0"
            await listener.aclose()


def test_a_lua_literal_reads_back_as_the_text_it_was_made_from() -> None:
    from progressq.backends.redis._scripts import lua_literal

    text = "a\"b'c\\d\n\x00\u00e9]]--[==[%1\\1" + "23"  # an escape followed by digits stays three digits
    with redis.Redis.from_url(REDIS_URL) as client:
        assert client.eval(f"return {lua_literal(text)}", 0) == text.encode()


async def test_a_take_under_a_cap_counts_each_owners_running_tasks_once(make: Make) -> None:
    # the take counts a task against its owner's cap as it checks the cap (its claim is told):
    # an owner passed over at its cap, or whose task ends, is counted as it runs, never twice
    async with make() as backend:
        client, queue = backend.client, backend.queue
        running = f"{backend.prefix}:running"
        queue.limit_running_per_owner(2)
        for n in range(3):
            await backend.enqueue_and_announce(_record("alice", n), max_unfinished=None)
        await backend.enqueue_and_announce(_record("bob", 0), max_unfinished=None)
        take = queue._take  # one take (``lease_many`` waits for a task when none is to run)
        leases = await take(queue._taking[0], 10)  # alice's third waits: she is at her cap
        assert sorted(lease.record.id for lease in leases) == ["task-alice-0", "task-alice-1", "task-bob-0"]
        assert await client.hgetall(running) == {b"alice": b"2", b"bob": b"1"}
        assert await take(queue._taking[0], 10) == []  # alice passed over again: her count as it was
        assert await client.hgetall(running) == {b"alice": b"2", b"bob": b"1"}
        assert (await queue.statistics()).running == 3
        done = leases[0].record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
        assert await backend.save_and_publish(leases[0], done, done.view_json(), finish=True)
        (third,) = await take(queue._taking[0], 10)
        assert third.record.id == "task-alice-2"
        assert await client.hgetall(running) == {b"alice": b"2", b"bob": b"1"}


async def test_a_task_its_take_leaves_unread_behind_an_older_entry_is_counted_when_claimed(make: Make) -> None:
    # an entry left unread in the stream (by an older version) is read first; the task the take
    # added behind it runs on a later take, and counts against its owner's cap only then
    async with make() as backend:
        client, queue = backend.client, backend.queue
        stream, running = f"{backend.prefix}:queue", f"{backend.prefix}:running"
        queue.limit_running_per_owner(2)
        await client.xgroup_create(stream, "workers", id="0", mkstream=True)
        await client.xadd(stream, {"t": "gone"})  # a task that no longer exists
        await backend.enqueue_and_announce(_record("alice", 0), max_unfinished=None)
        take = queue._take  # one take (``lease_many`` takes again at once)
        assert await take(queue._taking[0], 1) == []  # read the older entry (dropped), not alice's
        assert await client.hget(running, "alice") is None
        assert (await queue.statistics()).running == 0
        (lease,) = await take(queue._taking[0], 1)
        assert lease.record.id == "task-alice-0"
        assert await client.hget(running, "alice") == b"1"
        assert (await queue.statistics()).running == 1
