"""The backend conformance suite: the contract tests every backend must pass.

Run it on your own backend by subclassing :class:`BackendConformance` in a test module and
providing a ``make_backend`` fixture that returns a factory of *unopened* backends (the
tests open and close them)::

    import pytest
    from progressq.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        shared_state = True  # two backends from one factory see the same tasks and events

        @pytest.fixture
        def make_backend(self):
            def make(*, capacity=None, history_size=None):
                return MyBackend(capacity=capacity or 10_000, history_size=history_size or 1000)
            yield make
            ...  # delete what the test stored

The tests are async and use the anyio pytest plugin (installed with anyio); they run on
asyncio unless the subclass overrides the ``anyio_backend`` fixture. pytest is needed to
import this module; progressq itself never imports it.

``make_backend(capacity=n)`` must give a queue that holds at most ``n`` waiting tasks;
``make_backend(history_size=n)`` a registry that keeps at least the last ``n`` events of
an identity (and far fewer than ``n + 200``). With ``shared_state = True`` the suite also
checks that two backends from one factory behave as two processes on one store.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol

import anyio
import msgspec
import pytest

from progressq._conformance_scheduling import SchedulingConformance
from progressq._context import TaskContext
from progressq.contracts import Backend, Event, Lease, TaskRecord
from progressq.errors import QueueFull
from progressq.hub import Hub

__all__ = ("BackendConformance", "BackendFactory", "RecordingSink", "check_task_events")

_WAIT = 60.0  # seconds a test waits for something that should happen at once: a hang guard, generous for busy machines


class BackendFactory(Protocol):
    """Makes an unopened backend; ``None`` options mean the backend's defaults."""

    def __call__(self, *, capacity: int | None = None, history_size: int | None = None) -> Backend: ...


class RecordingSink:
    """An ``EventSink`` that keeps what it is given and lets a test wait for it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    @property
    def seqs(self) -> list[int]:
        return [event.seq for event in self.events]

    async def wait_for(self, predicate: Callable[[list[Event]], bool], within: float = _WAIT) -> None:
        """Wait until ``predicate(events)`` holds; fail the test after ``within`` seconds."""
        with anyio.fail_after(within):
            while not predicate(self.events):
                self._changed = anyio.Event()
                await self._changed.wait()

    async def wait_count(self, count: int, within: float = _WAIT) -> None:
        await self.wait_for(lambda events: len(events) >= count, within)


_BASE_TIME = datetime(2030, 1, 1, tzinfo=UTC)


def _record(owner: str = "alice", n: int = 0, **changes: Any) -> TaskRecord:
    """A new task record; ``n`` orders creation times."""
    return TaskRecord(
        id=f"task-{owner}-{n}-{secrets.token_hex(4)}",
        kind="work",
        name=f"task {n}",
        owner=owner,
        created_at=_BASE_TIME + timedelta(seconds=n),
        **changes,
    )


async def _lease(backend: Backend) -> Lease:
    with anyio.fail_after(_WAIT):
        return await backend.queue.lease()


async def _no_lease(backend: Backend, wait: float = 0.5) -> Lease | None:
    """The lease the queue hands out within ``wait`` seconds, or None."""
    with anyio.move_on_after(wait):
        return await backend.queue.lease()
    return None


async def _publish(backend: Backend, identity: str, n: int, task_id: str = "t") -> Event:
    return await backend.registry.publish(identity, "taskProgress", task_id, n, b'{"n":%d}' % n)


def _gapless_from_one(seqs: Sequence[int]) -> bool:
    return list(seqs) == list(range(1, len(seqs) + 1))


class BackendConformance(SchedulingConformance):
    """Contract tests for a backend's ``TaskQueue`` and ``ClientRegistry``, and the Hub on it
    (and its capabilities: fair dispatch between owners, delayed tasks, ...).

    Subclass it as ``Test...`` and provide the ``make_backend`` fixture (see the module doc).
    """

    shared_state: ClassVar[bool] = False
    """Two backends made by one factory share tasks and events (as processes on one Redis)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    # --- queue ---------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_task_life_and_statistics(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            record = _record()
            await queue.enqueue(record)
            assert await queue.get(record.id) == record
            assert _counts(await queue.statistics()) == (1, 0)
            lease = await _lease(backend)
            assert lease.record.id == record.id
            assert lease.record.attempt == 1
            assert lease.record.revision > record.revision
            assert _counts(await queue.statistics()) == (0, 1)
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
            assert _counts(await queue.statistics()) == (0, 0)
            assert await _no_lease(backend) is None

    @pytest.mark.anyio
    async def test_leases_in_enqueue_order(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            records = [_record(n=n) for n in range(5)]
            for record in records:
                await backend.queue.enqueue(record)
            leased = [(await _lease(backend)).record.id for _ in records]
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
            await queue.enqueue(_record())
            first = await _lease(backend)
            assert await queue.release(first, first.record.evolve(status="queued", message="again"))
            second = await _lease(backend)
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
            assert _counts(await queue.statistics()) == (0, 0)

    @pytest.mark.anyio
    async def test_release_hands_the_task_back(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            await queue.enqueue(_record())
            lease = await _lease(backend)
            assert await queue.save(lease, lease.record.evolve(status="running"))
            assert _counts(await queue.statistics()) == (0, 1)
            assert await queue.release(lease, lease.record.evolve(status="queued", message="retrying"))
            assert _counts(await queue.statistics()) == (1, 0)
            again = await _lease(backend)
            assert again.record.id == lease.record.id
            assert again.record.attempt == 2
            assert again.record.message == "retrying"

    @pytest.mark.anyio
    async def test_cancel_queued_task_never_runs(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            doomed, other = _record(n=1), _record(n=2)
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
            assert _counts(await queue.statistics()) == (1, 0)
            assert (await _lease(backend)).record.id == other.id
            assert await _no_lease(backend) is None
            again = await queue.request_cancel(doomed.id, "alice")
            assert again is not None
            assert again.result == "finished"

    @pytest.mark.anyio
    async def test_cancel_running_task_is_requested_and_watched(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend, anyio.create_task_group() as group:
            queue = backend.queue
            record = _record()
            await queue.enqueue(record)
            lease = await _lease(backend)
            assert await queue.save(lease, lease.record.evolve(status="running"))
            seen = anyio.Event()

            async def watch() -> None:
                async with aclosing(queue.watch_cancellations()) as watched:
                    async for task_id in watched:
                        if task_id == record.id:
                            seen.set()
                            return

            group.start_soon(watch)
            with anyio.fail_after(_WAIT):
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
            assert _counts(await queue.statistics()) == (0, 0)

    @pytest.mark.anyio
    async def test_cancel_of_a_leased_task_reaches_its_worker(self, make_backend: BackendFactory) -> None:
        """Leased but not yet saved as running: its worker must learn of the cancel."""
        async with make_backend() as backend:
            queue = backend.queue
            await queue.enqueue(_record())
            lease = await _lease(backend)
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
            assert _counts(await queue.statistics()) == (0, 0)

    @pytest.mark.anyio
    async def test_cancel_needs_the_owner(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            record = _record()
            await backend.queue.enqueue(record)
            assert await backend.queue.request_cancel(record.id, "mallory") is None
            assert await backend.queue.request_cancel("no-such-task", "alice") is None
            stored = await backend.queue.get(record.id)
            assert stored is not None
            assert stored.status == "queued"

    @pytest.mark.anyio
    async def test_list_by_owner_newest_first(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            mine = [_record("alice", n) for n in range(1, 5)]
            for record in [mine[0], _record("bob", 2), *mine[1:]]:
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
            await queue.enqueue(_record(n=1))
            await queue.enqueue(_record(n=2))
            refused = _record(n=3)
            with pytest.raises(QueueFull):
                await queue.enqueue(refused)
            assert await queue.get(refused.id) is None
            assert _counts(await queue.statistics()) == (2, 0)
            lease = await _lease(backend)  # a leased task no longer waits
            await queue.enqueue(_record(n=4))
            with pytest.raises(QueueFull):
                await queue.enqueue(_record(n=5))
            # a task handed back always fits, even when new work is refused
            assert await queue.release(lease, lease.record.evolve(status="queued"))
            assert _counts(await queue.statistics()) == (3, 0)

    # --- registry ------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_seq_is_gapless_from_one_per_identity(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            registry = backend.registry
            assert await registry.current_seq("alice") == 0
            seqs: dict[str, list[int]] = {"alice": [], "bob": []}
            for n in range(1, 21):
                identity = "alice" if n % 3 else "bob"
                seqs[identity].append((await _publish(backend, identity, n)).seq)
            assert _gapless_from_one(seqs["alice"])
            assert _gapless_from_one(seqs["bob"])
            assert await registry.current_seq("alice") == len(seqs["alice"])
            assert await registry.current_seq("bob") == len(seqs["bob"])

    @pytest.mark.anyio
    async def test_events_reach_only_their_identity(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            identities = [f"user-{i}" for i in range(6)]
            sinks = {identity: RecordingSink() for identity in identities}
            for identity, sink in sinks.items():
                await backend.registry.attach(identity, sink)
            published: dict[str, list[bytes]] = {identity: [] for identity in identities}
            for n in range(60):
                identity = identities[(n * 7) % len(identities)]
                event = await backend.registry.publish(
                    identity, "taskProgress", f"{identity}-task", n + 1, b'{"for":"%s"}' % identity.encode()
                )
                published[identity].append(event.task_json)
            for identity, sink in sinks.items():
                await sink.wait_count(len(published[identity]))
            await anyio.sleep(0.2)  # give a stray event time to arrive
            for identity, sink in sinks.items():
                assert [e.task_json for e in sink.events] == published[identity]
                assert {e.task_id for e in sink.events} == {f"{identity}-task"}
                assert _gapless_from_one(sink.seqs)

    @pytest.mark.anyio
    async def test_event_carries_what_was_published(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            sink = RecordingSink()
            await backend.registry.attach("alice", sink)
            payload = '{"id":"t-ü","note":"a:b\\nc"}'.encode()
            returned = await backend.registry.publish("alice", "taskQueued", "t-ü:1", 7, payload)
            await sink.wait_count(1)
            (got,) = sink.events
            for event in (returned, got):
                assert (event.seq, event.kind, event.task_id, event.revision, event.task_json) == (
                    1,
                    "taskQueued",
                    "t-ü:1",
                    7,
                    payload,
                )
            assert got.frame.startswith('{"type":"taskQueued","seq":1,"task":')

    @pytest.mark.anyio
    async def test_every_sink_of_an_identity_gets_the_same_event(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            first, second = RecordingSink(), RecordingSink()
            await backend.registry.attach("alice", first)
            await backend.registry.attach("alice", second)
            assert _reg_counts(backend) == (2, 1)
            await _publish(backend, "alice", 1)
            await first.wait_count(1)
            await second.wait_count(1)
            assert first.events[0] is second.events[0]

    @pytest.mark.anyio
    async def test_detach_stops_delivery(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            registry = backend.registry
            kept, gone = RecordingSink(), RecordingSink()
            await registry.attach("alice", kept)
            await registry.attach("alice", gone)
            await registry.attach("bob", RecordingSink())
            assert _reg_counts(backend) == (3, 2)
            await _publish(backend, "alice", 1)
            await gone.wait_count(1)
            await registry.detach("alice", gone)
            await registry.detach("alice", gone)  # twice is harmless
            assert _reg_counts(backend) == (2, 2)
            await _publish(backend, "alice", 2)
            await kept.wait_count(2)
            await anyio.sleep(0.1)
            assert gone.seqs == [1]
            await registry.detach("alice", kept)
            assert _reg_counts(backend) == (1, 1)
            # events go on being numbered and kept for a later resume
            await _publish(backend, "alice", 3)
            assert await registry.current_seq("alice") == 3
            resumed = RecordingSink()
            await registry.attach("alice", resumed)
            await _publish(backend, "alice", 4)
            await resumed.wait_count(1)
            assert resumed.seqs == [4]

    @pytest.mark.anyio
    async def test_events_after(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            registry = backend.registry
            assert await registry.events_after("alice", 0) == []
            assert await registry.events_after("alice", 3) is None
            for n in range(1, 6):
                await _publish(backend, "alice", n)
            await _publish(backend, "bob", 99)
            every = await registry.events_after("alice", 0)
            assert every is not None
            assert [e.seq for e in every] == [1, 2, 3, 4, 5]
            assert [e.task_json for e in every] == [b'{"n":%d}' % n for n in range(1, 6)]
            tail = await registry.events_after("alice", 3)
            assert tail is not None
            assert [(e.seq, e.revision) for e in tail] == [(4, 4), (5, 5)]
            assert await registry.events_after("alice", 5) == []
            assert await registry.events_after("alice", 6) is None  # a seq from the future

    @pytest.mark.anyio
    async def test_events_after_is_none_once_history_moved_on(self, make_backend: BackendFactory) -> None:
        async with make_backend(history_size=3) as backend:
            registry = backend.registry
            total = 260
            for n in range(1, total + 1):
                await _publish(backend, "alice", n)
            assert await registry.events_after("alice", 0) is None
            assert await registry.events_after("alice", 10) is None
            for after in (total - 3, total - 1):
                events = await registry.events_after("alice", after)
                assert events is not None
                assert [e.seq for e in events] == list(range(after + 1, total + 1))
            for after in range(0, total + 1, 13):  # never a partial answer
                events = await registry.events_after("alice", after)
                assert events is None or [e.seq for e in events] == list(range(after + 1, total + 1))

    # --- two processes on one store (shared_state) ---------------------------------------

    @pytest.mark.anyio
    async def test_shared_delivery_and_isolation_across_instances(self, make_backend: BackendFactory) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as web, make_backend() as other_web, make_backend() as worker:
            alice, bob = RecordingSink(), RecordingSink()
            await web.registry.attach("alice", alice)
            await other_web.registry.attach("bob", bob)
            for n in range(1, 11):
                publisher = worker if n % 2 else web
                await _publish(publisher, "alice" if n % 3 else "bob", n)
            await alice.wait_count(7)
            await bob.wait_count(3)
            await anyio.sleep(0.2)
            assert _gapless_from_one(alice.seqs)
            assert len(alice.seqs) == 7
            assert _gapless_from_one(bob.seqs)
            assert len(bob.seqs) == 3
            assert web.registry.statistics().clients == 1

    @pytest.mark.anyio
    async def test_shared_seq_gapless_under_concurrent_publishers(self, make_backend: BackendFactory) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as one, make_backend() as two:
            sink = RecordingSink()
            await one.registry.attach("alice", sink)
            returned: list[int] = []

            async def publish_many(backend: Backend, base: int) -> None:
                for n in range(40):
                    returned.append((await _publish(backend, "alice", base + n)).seq)

            async with anyio.create_task_group() as group:
                for base, backend in enumerate((one, two, one, two)):
                    group.start_soon(publish_many, backend, base * 100)
            assert sorted(returned) == list(range(1, 161))
            await sink.wait_count(160)
            assert sink.seqs == list(range(1, 161))

    @pytest.mark.anyio
    async def test_shared_queue_hands_each_task_to_one_worker(self, make_backend: BackendFactory) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as one, make_backend() as two:
            records = [_record(n=n) for n in range(10)]
            for record in records:
                await one.queue.enqueue(record)
            leased: list[str] = []

            async def take(backend: Backend) -> None:
                while (lease := await _no_lease(backend, 1.0)) is not None:
                    leased.append(lease.record.id)

            async with anyio.create_task_group() as group:
                group.start_soon(take, one)
                group.start_soon(take, two)
            assert sorted(leased) == sorted(r.id for r in records)

    # --- the engine on this backend ------------------------------------------------------

    @pytest.mark.anyio
    async def test_hub_delivers_each_owner_its_task_events(self, make_backend: BackendFactory) -> None:
        hub = Hub(
            make_backend(), secret="conformance-suite-secret", concurrency=4, progress_interval=0.0, shutdown_grace=1.0
        )

        @hub.task("steps")
        async def steps(ctx: TaskContext) -> dict[str, int]:
            for step in range(1, 11):
                await ctx.report(step * 10, f"step {step}")
                await anyio.sleep(0.01)
            if "fail" in ctx.name:
                raise RuntimeError("asked to fail")
            return {"steps": 10}

        async with hub:
            sinks = {owner: RecordingSink() for owner in ("alice", "bob")}
            for owner, sink in sinks.items():
                await hub.registry.attach(owner, sink)
            tasks = {
                owner: [(await hub.submit("steps", owner=owner, name=f"{owner} {n}")).id for n in range(3)]
                for owner in sinks
            }
            failing = await hub.submit("steps", owner="bob", name="please fail")
            tasks["bob"].append(failing.id)
            for owner, sink in sinks.items():
                expected = set(tasks[owner])
                await sink.wait_for(lambda events: _terminal_ids(events) >= expected)  # noqa: B023
            await anyio.sleep(0.2)
            for owner, sink in sinks.items():
                assert _gapless_from_one(sink.seqs)
                assert {e.task_id for e in sink.events} == set(tasks[owner])
                check_task_events(sink.events)
            final = await hub.get(failing.id, owner="bob")
            assert final.status == "failed"
            assert final.error == "RuntimeError: asked to fail"
            assert [r.status for r in await hub.list(owner="alice")] == ["completed"] * 3
            assert _counts(await hub.queue.statistics()) == (0, 0)


def _counts(statistics: Any) -> tuple[int, int]:
    return (statistics.queued, statistics.running)


def _reg_counts(backend: Backend) -> tuple[int, int]:
    statistics = backend.registry.statistics()
    return (statistics.connections, statistics.clients)


_TERMINAL = {"completed", "failed", "cancelled"}


def _terminal_ids(events: list[Event]) -> set[str]:
    return {e.task_id for e in events if _status(e) in _TERMINAL}


def _status(event: Event) -> str:
    view: dict[str, Any] = msgspec.json.decode(event.task_json)
    return str(view["status"])


def check_task_events(events: list[Event]) -> None:
    """Assert what an owner's events must show, per task: exactly one terminal event and
    nothing after it, revisions only rising, progress never falling within an attempt."""
    by_task: dict[str, list[tuple[Event, dict[str, Any]]]] = {}
    for event in events:
        by_task.setdefault(event.task_id, []).append((event, msgspec.json.decode(event.task_json)))
    for task_id, seen in by_task.items():
        statuses = [view["status"] for _, view in seen]
        terminal = [s for s in statuses if s in _TERMINAL]
        assert len(terminal) == 1, f"task {task_id}: terminal states {terminal}"
        assert statuses[-1] in _TERMINAL, f"task {task_id}: events after its end: {statuses}"
        revisions = [event.revision for event, _ in seen]
        assert revisions == sorted(set(revisions)), f"task {task_id}: revisions {revisions}"
        progress: dict[int, float] = {}
        for _, view in seen:
            attempt, value = view["attempt"], view["progress"]
            assert value >= progress.get(attempt, -math.inf), f"task {task_id}: progress fell in attempt {attempt}"
            progress[attempt] = value
