"""The conformance tests of the contract's capabilities that the engine's workers and submits
use: batch leasing, lost-lease watching, announcing enqueue, save-and-publish. Each runs on
whatever the backend has: its own implementation, or the default of ``QueueDefaults`` /
``BackendDefaults``; both must keep the contract."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import anyio
import msgspec
import pytest

from progressq._conformance_support import (
    BackendFactory,
    RecordingSink,
    counts,
    gapless_from_one,
    lease_within,
    new_record,
    no_lease,
    status_of,
)
from progressq.contracts import Lease
from progressq.errors import QueueFull

__all__ = ("CapabilityConformance",)


class CapabilityConformance:
    """``lease_many``, ``watch_lost_leases``, ``enqueue_and_announce``, ``save_and_publish``."""

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
