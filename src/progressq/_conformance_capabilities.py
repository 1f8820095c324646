"""The conformance tests of the contract's capabilities that the engine's workers and submits
use: batch leasing, lost-lease watching, announcing enqueue, save-and-publish, unique keys,
task ids, the backend's description. Each
runs on
whatever the backend has: its own implementation, or the default of ``QueueDefaults`` /
``BackendDefaults``; both must keep the contract."""

from __future__ import annotations

import contextlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import anyio
import msgspec
import pytest

from progressq._conformance_support import (
    BackendFactory,
    RecordingSink,
    counts,
    end_lease,
    gapless_from_one,
    lease_within,
    new_record,
    no_lease,
    status_of,
    uses_default,
)
from progressq.contracts import Lease, TaskRecord
from progressq.errors import DuplicateTask, QueueFull

__all__ = ("CapabilityConformance",)


class CapabilityConformance:
    """``lease_many``, ``watch_lost_leases``, ``enqueue_and_announce``, ``save_and_publish``,
    ``plain_save_and_publish``, ``task_with_key``, ``new_task_id``, ``describe``."""

    shared_state: ClassVar[bool] = False

    @pytest.mark.anyio
    async def test_lease_many_hands_out_at_least_one_and_at_most_the_limit(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            records = [new_record("batch", n) for n in range(5)]
            for record in records:
                await queue.enqueue(record)
            leased: list[Lease] = []
            with anyio.fail_after(60):
                while len(leased) < len(records):
                    batch = await queue.lease_many(3)
                    assert 1 <= len(batch) <= 3
                    leased += batch
            assert sorted(lease.record.id for lease in leased) == sorted(record.id for record in records)
            assert all(lease.record.attempt == 1 for lease in leased)
            assert counts(await queue.statistics()) == (0, 5)
            for lease in leased:  # each one a lease of its own, fenced as any
                done = lease.record.evolve(status="completed", finished_at=datetime.now(UTC))
                assert await queue.save(lease, done)
                await queue.finish(lease)
            assert counts(await queue.statistics()) == (0, 0)
            assert await no_lease(backend) is None

    @pytest.mark.anyio
    async def test_no_lease_is_told_lost_while_it_holds(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend, anyio.create_task_group() as group:
            queue = backend.queue
            await queue.enqueue(new_record())
            lease = await lease_within(backend)
            lost: list[tuple[str, int]] = []

            async def watch() -> None:
                async for item in queue.watch_lost_leases():
                    lost.append(item)

            group.start_soon(watch)
            for _ in range(3):
                assert await queue.extend(lease)
                await anyio.sleep(0.1)
            assert lost == []
            done = lease.record.evolve(status="completed", finished_at=datetime.now(UTC))
            assert await queue.save(lease, done)
            await queue.finish(lease)
            await anyio.sleep(0.1)
            assert lost == []  # a lease that ended is not lost either
            group.cancel_scope.cancel()

    @pytest.mark.anyio
    async def test_enqueue_and_announce_queues_tells_the_owner_and_keeps_the_limit(
        self, make_backend: BackendFactory
    ) -> None:
        async with make_backend() as backend:
            owner = f"submitter-{secrets.token_hex(3)}"
            sink = RecordingSink()
            await backend.registry.attach(owner, sink)
            first, second, third, fourth = (new_record(owner, n) for n in range(4))
            assert await backend.enqueue_and_announce(first, max_unfinished=2) is None
            assert await backend.enqueue_and_announce(second, max_unfinished=2) is None
            assert await backend.enqueue_and_announce(third, max_unfinished=2) == 2  # refused: two unfinished
            assert await backend.queue.get(third.id) is None
            await sink.wait_count(2)
            announced = [(e.kind, e.task_id, e.revision, e.task_json) for e in sink.events]
            assert announced == [("taskQueued", r.id, r.revision, r.view_json()) for r in (first, second)]
            lease = await lease_within(backend)
            assert lease.record.id == first.id
            done = lease.record.evolve(status="completed", finished_at=datetime.now(UTC))
            assert await backend.queue.save(lease, done)
            await backend.queue.finish(lease)
            assert await backend.enqueue_and_announce(third, max_unfinished=2) is None  # a finished one counts not
            assert await backend.enqueue_and_announce(fourth, max_unfinished=None) is None  # no limit
            await sink.wait_count(4)
            await anyio.sleep(0.2)  # give a stray event time to arrive
            assert [e.task_id for e in sink.events] == [first.id, second.id, third.id, fourth.id]
            assert gapless_from_one(sink.seqs)
            listed = await backend.queue.list_by_owner(owner)
            assert {r.id for r in listed} == {first.id, second.id, third.id, fourth.id}

    @pytest.mark.anyio
    async def test_enqueue_and_announce_when_full_queues_and_announces_nothing(
        self, make_backend: BackendFactory
    ) -> None:
        async with make_backend(capacity=1) as backend:
            sink = RecordingSink()
            await backend.registry.attach("alice", sink)
            kept, refused = new_record(n=1), new_record(n=2)
            assert await backend.enqueue_and_announce(kept, max_unfinished=None) is None
            with pytest.raises(QueueFull):
                await backend.enqueue_and_announce(refused, max_unfinished=10)
            assert await backend.queue.get(refused.id) is None
            await sink.wait_count(1)
            await anyio.sleep(0.2)
            assert [e.task_id for e in sink.events] == [kept.id]

    @pytest.mark.anyio
    async def test_save_and_publish_is_fenced_tells_the_owner_and_finishes(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            sink = RecordingSink()
            await backend.registry.attach("alice", sink)
            record = new_record()
            await queue.enqueue(record)
            lease = await lease_within(backend)
            stale = Lease(msgspec.structs.replace(lease.record, attempt=lease.record.attempt - 1), lease.token)
            running = lease.record.evolve(status="running", progress=5.0)
            assert not await backend.save_and_publish(stale, running, running.view_json())
            stored = await queue.get(record.id)
            assert stored is not None
            assert stored.progress == 0.0  # fenced out: nothing stored
            assert await backend.save_and_publish(lease, running, running.view_json())
            await sink.wait_count(1)
            done = running.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
            assert await backend.save_and_publish(lease, done, done.view_json(), finish=True)
            assert counts(await queue.statistics()) == (0, 0)
            # finished: nothing changes it, not even its own last lease
            failed = done.evolve(status="failed", error="late")
            assert not await backend.save_and_publish(lease, failed, failed.view_json(), finish=True)
            await sink.wait_count(2)
            await anyio.sleep(0.2)  # give a stray event time to arrive
            published = [(e.kind, e.revision, status_of(e)) for e in sink.events]
            assert published == [
                ("taskProgress", running.revision, "running"),
                ("taskProgress", done.revision, "completed"),
            ]
            assert gapless_from_one(sink.seqs)
            stored = await queue.get(record.id)
            assert stored is not None
            assert (stored.status, stored.revision) == ("completed", done.revision)
            assert await no_lease(backend) is None

    @pytest.mark.anyio
    async def test_plain_save_and_publish_does_what_save_and_publish_does(self, make_backend: BackendFactory) -> None:
        """The plain form a backend hands progress reports (``plain_save_and_publish``), if it
        has one: fenced, stored and published as ``save_and_publish`` without ``finish``."""
        async with make_backend() as backend:
            commit = backend.plain_save_and_publish()
            if commit is None:  # its reports await ``save_and_publish``, checked above
                return
            sink = RecordingSink()
            await backend.registry.attach("alice", sink)
            record = new_record()
            await backend.queue.enqueue(record)
            lease = await lease_within(backend)
            stale = Lease(msgspec.structs.replace(lease.record, attempt=lease.record.attempt - 1), lease.token)
            running = lease.record.evolve(status="running", progress=5.0)
            assert not commit(stale, running, running.view_json())
            assert commit(lease, running, running.view_json())
            stored = await backend.queue.get(record.id)
            assert stored is not None
            assert (stored.status, stored.progress, stored.revision) == ("running", 5.0, running.revision)
            await sink.wait_count(1)
            await anyio.sleep(0.2)  # give a stray event (the fenced-out one) time to arrive
            assert [(e.kind, e.revision, status_of(e)) for e in sink.events] == [
                ("taskProgress", running.revision, "running")
            ]
            assert counts(await backend.queue.statistics()) == (0, 1)  # not finished: still running
            done = running.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
            assert await backend.save_and_publish(lease, done, done.view_json(), finish=True)

    @pytest.mark.anyio
    async def test_a_unique_key_names_one_unfinished_task_until_it_ends(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = unique = backend.queue
            # with its own UniqueKeys the queue's enqueue refuses a duplicate; with the
            # default, the backend's submit (enqueue_and_announce) does
            default = uses_default(queue, "task_with_key")
            owner, other = f"keyed-{secrets.token_hex(3)}", f"keyed-other-{secrets.token_hex(3)}"

            def keyed(n: int, key: str, who: str = owner, **changes: Any) -> TaskRecord:
                return new_record(who, n, key=key, **changes)

            async def refused(record: TaskRecord, holder: TaskRecord) -> None:
                submit = backend.enqueue_and_announce(record, max_unfinished=None) if default else queue.enqueue(record)
                with pytest.raises(DuplicateTask) as refusal:
                    await submit
                assert refusal.value.task_id == holder.id
                assert await queue.get(record.id) is None  # nothing stored
                found = await unique.task_with_key(holder.owner, holder.key or "")
                assert found is not None
                assert found.id == holder.id

            async def free(record: TaskRecord) -> None:
                assert await unique.task_with_key(record.owner, record.key or "") is None

            # each end frees the key: completed, failed (dead), cancelled queued, running, scheduled
            first, theirs, export = keyed(1, "report"), keyed(2, "report", other), keyed(3, "export")
            for record in (first, theirs, export):  # another owner's key, or another key: its own task
                await queue.enqueue(record)
            await refused(keyed(4, "report"), first)
            scheduled = keyed(5, "nightly", status="scheduled", run_at=datetime.now(UTC) + timedelta(hours=1))
            await queue.enqueue(scheduled)
            await refused(keyed(6, "nightly"), scheduled)
            leases = {lease.record.id: lease for lease in [await lease_within(backend) for _ in range(3)]}
            assert set(leases) == {first.id, theirs.id, export.id}
            await refused(keyed(7, "report"), first)  # running is unfinished too
            await end_lease(backend, leases[first.id])
            await free(first)
            again = keyed(8, "report")
            await queue.enqueue(again)  # once it finished, the key queues a new task
            await refused(keyed(9, "report"), again)
            outcome = await queue.request_cancel(again.id, owner)  # cancelled while queued
            assert outcome is not None
            assert outcome.result == "cancelled"
            await free(again)
            dead = leases[export.id]
            failed = dead.record.evolve(status="failed", error="gave up", finished_at=datetime.now(UTC))
            assert await queue.save(dead, failed)  # attempts used up: a dead letter
            await queue.finish(dead)
            await free(export)
            outcome = await queue.request_cancel(scheduled.id, owner)  # cancelled while scheduled
            assert outcome is not None
            assert outcome.result == "cancelled"
            await free(scheduled)
            await queue.enqueue(keyed(10, "nightly"))
            running = leases[theirs.id]
            cancelled = running.record.evolve(status="cancelled", finished_at=datetime.now(UTC))
            assert await queue.save(running, cancelled)  # cancelled while running
            await queue.finish(running)
            await free(theirs)

    @pytest.mark.anyio
    async def test_concurrent_submits_with_one_key_give_one_task(self, make_backend: BackendFactory) -> None:
        from progressq.hub import Hub

        owner = f"racer-{secrets.token_hex(3)}"
        hubs = [
            Hub(make_backend(), secret="unique-conformance-secret", concurrency=0, max_active_per_owner=1)
            for _ in range(3 if self.shared_state else 1)
        ]
        for hub in hubs:
            hub.task("tick")(_tick)
        async with contextlib.AsyncExitStack() as stack:
            for hub in hubs:
                await stack.enter_async_context(hub)
            answers: list[TaskRecord] = []

            async def submit(hub: Hub) -> None:
                answers.append(await hub.submit("tick", owner=owner, key="only-once"))

            async with anyio.create_task_group() as group:
                for n in range(30):
                    group.start_soon(submit, hubs[n % len(hubs)])
            stored = await hubs[0].queue.list_by_owner(owner)
            # one task, and every submit answered with it (the limit of 1 refused none of them)
            assert [record.id for record in stored] == [answers[0].id]
            assert {record.id for record in answers} == {answers[0].id}
            await hubs[0].cancel(answers[0].id, owner=owner)
            fresh = await hubs[-1].submit("tick", owner=owner, key="only-once")
            assert fresh.id != answers[0].id  # the first one ended: the key queues a new task
            await hubs[0].cancel(fresh.id, owner=owner)

    @pytest.mark.anyio
    async def test_new_task_ids_are_unique_url_safe_and_found(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            owners = [f"minted-{n}-{secrets.token_hex(3)}" for n in range(12)]
            ids = [queue.new_task_id(owner) for owner in owners for _ in range(5)]
            assert len(set(ids)) == len(ids)
            assert all(_URL_SAFE.fullmatch(task_id) for task_id in ids), ids
            records = [
                msgspec.structs.replace(new_record(owner, n), id=queue.new_task_id(owner))
                for n, owner in enumerate(owners)
            ]
            for record in records:
                await queue.enqueue(record)
            for record in records:  # found from the id alone, and by its owner
                stored = await queue.get(record.id)
                assert stored is not None
                assert stored.owner == record.owner
                assert [r.id for r in await queue.list_by_owner(record.owner)] == [record.id]
            leased: dict[str, Lease] = {}
            with anyio.fail_after(60):
                while len(leased) < len(records):
                    for lease in await queue.lease_many(len(records) - len(leased)):
                        leased[lease.record.id] = lease
            assert set(leased) == {record.id for record in records}
            for lease in leased.values():
                await end_lease(backend, lease)
            assert counts(await queue.statistics()) == (0, 0)

    @pytest.mark.anyio
    async def test_describe_names_the_backend_on_one_line(self, make_backend: BackendFactory) -> None:
        """What the log lines an operator compares say of the backend: one line naming its
        class; two backends on one store (``shared_state``) say the same."""
        async with make_backend() as backend, make_backend() as other:
            described = backend.describe()
            assert type(backend).__name__ in described
            assert "\n" not in described
            if self.shared_state:
                assert other.describe() == described


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]{16,}")


async def _tick(ctx: Any) -> None:
    """A task's handler (no worker runs it in these tests)."""
