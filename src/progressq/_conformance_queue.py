"""The conformance tests of a backend's ``TaskQueue`` (its required operations)."""

from __future__ import annotations

from contextlib import aclosing
from datetime import UTC, datetime

import anyio
import pytest

from progressq._conformance_support import WAIT, BackendFactory, counts, lease_within, new_record, no_lease
from progressq.errors import QueueFull

__all__ = ("QueueConformance",)


class QueueConformance:
    """Enqueue, lease, fencing, release, cancel, listing and capacity."""

    # --- queue ---------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_task_life_and_statistics(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            record = new_record()
            await queue.enqueue(record)
            assert await queue.get(record.id) == record
            assert counts(await queue.statistics()) == (1, 0)
            lease = await lease_within(backend)
            assert lease.record.id == record.id
            assert lease.record.attempt == 1
            assert lease.record.revision > record.revision
            assert counts(await queue.statistics()) == (0, 1)
            running = lease.record.evolve(status="running", progress=10.0)
            assert await queue.save(lease, running)
            assert await queue.extend(lease)
            stored = await queue.get(record.id)
            assert stored is not None
            assert (stored.status, stored.progress, stored.attempt) == ("running", 10.0, 1)
            done = running.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
            assert await queue.save(lease, done)
            await queue.finish(lease)
            stored = await queue.get(record.id)
            assert stored is not None
            assert stored.status == "completed"
            assert stored.revision == done.revision
            assert counts(await queue.statistics()) == (0, 0)
            assert await no_lease(backend) is None

    @pytest.mark.anyio
    async def test_leases_in_enqueue_order(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            records = [new_record(n=n) for n in range(5)]
            for record in records:
                await backend.queue.enqueue(record)
            leased = [(await lease_within(backend)).record.id for _ in records]
            assert leased == [record.id for record in records]

    @pytest.mark.anyio
    async def test_get_unknown_is_none(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            assert await backend.queue.get("no-such-task") is None
            assert await backend.queue.list_by_owner("nobody") == []

    @pytest.mark.anyio
    async def test_stale_lease_is_fenced(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            await queue.enqueue(new_record())
            first = await lease_within(backend)
            assert await queue.release(first, first.record.evolve(status="queued", message="again"))
            second = await lease_within(backend)
            assert second.record.attempt == 2
            stale = first.record.evolve(status="running", progress=50.0)
            assert not await queue.save(first, stale)
            assert not await queue.extend(first)
            assert not await queue.release(first, first.record.evolve(status="queued"))
            assert await queue.extend(second)
            current = second.record.evolve(status="running", progress=5.0)
            assert await queue.save(second, current)
            stored = await queue.get(second.record.id)
            assert stored is not None
            assert (stored.attempt, stored.progress) == (2, 5.0)
            done = current.evolve(status="failed", error="boom", finished_at=datetime.now(UTC))
            assert await queue.save(second, done)
            await queue.finish(second)
            # nothing changes a finished task, not even its own last lease
            assert not await queue.save(second, done.evolve(status="completed"))
            stored = await queue.get(second.record.id)
            assert stored is not None
            assert stored.status == "failed"
            assert counts(await queue.statistics()) == (0, 0)

    @pytest.mark.anyio
    async def test_release_hands_the_task_back(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            await queue.enqueue(new_record())
            lease = await lease_within(backend)
            assert await queue.save(lease, lease.record.evolve(status="running"))
            assert counts(await queue.statistics()) == (0, 1)
            assert await queue.release(lease, lease.record.evolve(status="queued", message="retrying"))
            assert counts(await queue.statistics()) == (1, 0)
            again = await lease_within(backend)
            assert again.record.id == lease.record.id
            assert again.record.attempt == 2
            assert again.record.message == "retrying"

    @pytest.mark.anyio
    async def test_cancel_queued_task_never_runs(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            doomed, other = new_record(n=1), new_record(n=2)
            await queue.enqueue(doomed)
            await queue.enqueue(other)
            outcome = await queue.request_cancel(doomed.id, "alice")
            assert outcome is not None
            assert outcome.result == "cancelled"
            assert outcome.record.status == "cancelled"
            assert outcome.record.finished_at is not None
            assert outcome.record.revision > doomed.revision
            stored = await queue.get(doomed.id)
            assert stored is not None
            assert stored.status == "cancelled"
            assert counts(await queue.statistics()) == (1, 0)
            assert (await lease_within(backend)).record.id == other.id
            assert await no_lease(backend) is None
            again = await queue.request_cancel(doomed.id, "alice")
            assert again is not None
            assert again.result == "finished"

    @pytest.mark.anyio
    async def test_cancel_running_task_is_requested_and_watched(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend, anyio.create_task_group() as group:
            queue = backend.queue
            record = new_record()
            await queue.enqueue(record)
            lease = await lease_within(backend)
            assert await queue.save(lease, lease.record.evolve(status="running"))
            seen = anyio.Event()

            async def watch() -> None:
                async with aclosing(queue.watch_cancellations()) as watched:
                    async for task_id in watched:
                        if task_id == record.id:
                            seen.set()
                            return

            group.start_soon(watch)
            with anyio.fail_after(WAIT):
                while not seen.is_set():  # asking again is harmless; the watcher may start late
                    outcome = await queue.request_cancel(record.id, "alice")
                    assert outcome is not None
                    assert outcome.result == "requested"
                    with anyio.move_on_after(0.1):
                        await seen.wait()
            stored = await queue.get(record.id)
            assert stored is not None
            assert stored.cancel_requested
            assert stored.status == "running"
            cancelled = lease.record.evolve(status="cancelled", finished_at=datetime.now(UTC))
            assert await queue.save(lease, cancelled)
            await queue.finish(lease)
            outcome = await queue.request_cancel(record.id, "alice")
            assert outcome is not None
            assert outcome.result == "finished"
            assert counts(await queue.statistics()) == (0, 0)

    @pytest.mark.anyio
    async def test_cancel_of_a_leased_task_reaches_its_worker(self, make_backend: BackendFactory) -> None:
        """Leased but not yet saved as running: its worker must learn of the cancel."""
        async with make_backend() as backend:
            queue = backend.queue
            await queue.enqueue(new_record())
            lease = await lease_within(backend)
            outcome = await queue.request_cancel(lease.record.id, "alice")
            assert outcome is not None
            if outcome.result == "requested":
                stored = await queue.get(lease.record.id)
                assert stored is not None
                assert stored.cancel_requested
                assert await queue.save(lease, lease.record.evolve(status="cancelled", finished_at=datetime.now(UTC)))
                await queue.finish(lease)
            else:
                assert outcome.result == "cancelled"
                assert not await queue.save(lease, lease.record.evolve(status="running"))
            stored = await queue.get(lease.record.id)
            assert stored is not None
            assert stored.status == "cancelled"
            assert counts(await queue.statistics()) == (0, 0)

    @pytest.mark.anyio
    async def test_cancel_needs_the_owner(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            record = new_record()
            await backend.queue.enqueue(record)
            assert await backend.queue.request_cancel(record.id, "mallory") is None
            assert await backend.queue.request_cancel("no-such-task", "alice") is None
            stored = await backend.queue.get(record.id)
            assert stored is not None
            assert stored.status == "queued"

    @pytest.mark.anyio
    async def test_list_by_owner_newest_first(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            mine = [new_record("alice", n) for n in range(1, 5)]
            for record in [mine[0], new_record("bob", 2), *mine[1:]]:
                await backend.queue.enqueue(record)
            listed = await backend.queue.list_by_owner("alice")
            assert [r.id for r in listed] == [r.id for r in reversed(mine)]
            assert [r.owner for r in await backend.queue.list_by_owner("bob")] == ["bob"]
            newest = await backend.queue.list_by_owner("alice", limit=2)
            assert [r.id for r in newest] == [mine[3].id, mine[2].id]

    @pytest.mark.anyio
    async def test_bounded_queue_raises_queue_full(self, make_backend: BackendFactory) -> None:
        async with make_backend(capacity=2) as backend:
            queue = backend.queue
            await queue.enqueue(new_record(n=1))
            await queue.enqueue(new_record(n=2))
            refused = new_record(n=3)
            with pytest.raises(QueueFull):
                await queue.enqueue(refused)
            assert await queue.get(refused.id) is None
            assert counts(await queue.statistics()) == (2, 0)
            lease = await lease_within(backend)  # a leased task no longer waits
            await queue.enqueue(new_record(n=4))
            with pytest.raises(QueueFull):
                await queue.enqueue(new_record(n=5))
            # a task handed back always fits, even when new work is refused
            assert await queue.release(lease, lease.record.evolve(status="queued"))
            assert counts(await queue.statistics()) == (3, 0)
