"""What the conformance suite's parts share: a sink that records, records, small waits."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio
import msgspec

from progressq.contracts import Backend, BackendDefaults, Event, Lease, QueueDefaults, TaskRecord

__all__ = ("BackendFactory", "RecordingSink", "check_task_events", "uses_default")

WAIT = 60.0  # seconds a test waits for something that should happen at once: a hang guard, generous for busy machines


class BackendFactory(Protocol):
    """Makes an unopened backend; ``None`` options mean the backend's defaults."""

    def __call__(self, *, capacity: int | None = None, history_size: int | None = None) -> Backend: ...


class RecordingSink:
    """An ``EventSink`` that keeps what it is given, counts the registry's resyncs, and lets
    a test wait for either."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.resyncs = 0
        self._changed = anyio.Event()

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def resync(self) -> None:
        self.resyncs += 1
        self._changed.set()

    @property
    def seqs(self) -> list[int]:
        return [event.seq for event in self.events]

    async def wait_for(self, predicate: Callable[[list[Event]], bool], within: float = WAIT) -> None:
        """Wait until ``predicate(events)`` holds; fail the test after ``within`` seconds."""
        with anyio.fail_after(within):
            while not predicate(self.events):
                self._changed = anyio.Event()
                await self._changed.wait()

    async def wait_count(self, count: int, within: float = WAIT) -> None:
        await self.wait_for(lambda events: len(events) >= count, within)


_BASE_TIME = datetime(2030, 1, 1, tzinfo=UTC)


def new_record(owner: str = "alice", n: int = 0, **changes: Any) -> TaskRecord:
    """A new task record; ``n`` orders creation times."""
    return TaskRecord(
        id=f"task-{owner}-{n}-{secrets.token_hex(4)}",
        kind="work",
        name=f"task {n}",
        owner=owner,
        created_at=_BASE_TIME + timedelta(seconds=n),
        **changes,
    )


async def lease_within(backend: Backend) -> Lease:
    with anyio.fail_after(WAIT):
        return await backend.queue.lease()


async def no_lease(backend: Backend, wait: float = 0.5) -> Lease | None:
    """The lease the queue hands out within ``wait`` seconds, or None."""
    with anyio.move_on_after(wait):
        return await backend.queue.lease()
    return None


async def end_lease(backend: Backend, lease: Lease) -> None:
    """Complete the leased task (save its terminal record, acknowledge it)."""
    done = lease.record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
    assert await backend.queue.save(lease, done)
    await backend.queue.finish(lease)


async def publish_n(backend: Backend, identity: str, n: int, task_id: str = "t") -> Event:
    return await backend.registry.publish(identity, "taskProgress", task_id, n, b'{"n":%d}' % n)


def gapless_from_one(seqs: Sequence[int]) -> bool:
    return list(seqs) == list(range(1, len(seqs) + 1))


def counts(statistics: Any) -> tuple[int, int]:
    return (statistics.queued, statistics.running)


def reg_counts(backend: Backend) -> tuple[int, int]:
    statistics = backend.registry.statistics()
    return (statistics.connections, statistics.clients)


_TERMINAL = {"completed", "failed", "cancelled"}


def terminal_ids(events: list[Event]) -> set[str]:
    return {e.task_id for e in events if status_of(e) in _TERMINAL}


def status_of(event: Event) -> str:
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


def uses_default(implementation: object, name: str) -> bool:
    """Whether ``implementation`` (a queue or a backend) takes its method ``name`` from
    ``QueueDefaults`` or ``BackendDefaults`` rather than implementing it itself."""
    method = getattr(type(implementation), name)
    return method is getattr(QueueDefaults, name, None) or method is getattr(BackendDefaults, name, None)
