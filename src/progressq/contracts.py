"""The three contracts a backend or an application plugs in, and the records they move.

Backends implement these protocols structurally (no inheritance). The engine owns policy
(identity, sequencing, coalescing, retries); backends move records and bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from progressq.messages import TERMINAL_STATUSES, EventType, TaskStatus, TaskView, encode, frame_event

__all__ = (
    "Backend",
    "CancelOutcome",
    "ClientRegistry",
    "DeadLetters",
    "Event",
    "EventSink",
    "FairDispatch",
    "Lease",
    "Processor",
    "QueueStatistics",
    "RegistryStatistics",
    "SlotClaims",
    "TaskQueue",
    "TaskRecord",
    "UniqueKeys",
    "utc_now",
)


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The stored state of one task. Immutable: changes make a new record (``evolve``).

    ``attempt`` is the lease generation: a backend bumps it when it hands the task to a
    worker, and refuses writes carrying an older one (fencing). ``revision`` counts saved
    changes, so two views of one task can be ordered.
    """

    id: str
    kind: str
    name: str
    owner: str
    payload: Any = msgspec.field(default_factory=dict)  # the params, as JSON builtins
    status: TaskStatus = "queued"
    progress: float = 0.0
    message: str = ""
    created_at: datetime = msgspec.field(default_factory=utc_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 0
    revision: int = 1
    error: str | None = None
    result: Any = None
    cancel_requested: bool = False
    context: dict[str, str] = msgspec.field(default_factory=dict)  # written by submit hooks, e.g. a trace
    run_at: datetime | None = None  # not handed out before then (scheduled, or a retry's backoff)
    key: str | None = None  # submit's unique key: one unfinished task per owner and key (``UniqueKeys``)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def evolve(self, **changes: Any) -> TaskRecord:
        """A copy with ``changes`` applied and the revision bumped."""
        return msgspec.structs.replace(self, revision=self.revision + 1, **changes)

    def view(self) -> TaskView:
        return TaskView(
            id=self.id,
            name=self.name,
            status=self.status,
            progress=self.progress,
            message=self.message,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            attempt=self.attempt,
            error=self.error if self.error is not None else msgspec.UNSET,
            result=self.result if self.result is not None else msgspec.UNSET,
            run_at=self.run_at if self.run_at is not None else msgspec.UNSET,
        )

    def view_json(self) -> bytes:
        return encode(self.view())


class Event(msgspec.Struct, eq=False, gc=False):
    """One event of an identity's sequence: what a backend stores and delivers.

    ``frame`` (the exact WebSocket text) is built on first use and shared by every
    connection that receives this object, so an event is framed once per process.
    """

    seq: int
    kind: EventType
    task_id: str
    revision: int
    task_json: bytes
    frame_text: str | None = None  # ``frame`` once built

    @property
    def frame(self) -> str:
        if self.frame_text is None:
            self.frame_text = frame_event(self.kind, self.seq, self.task_json).decode()
        return self.frame_text

    def __repr__(self) -> str:
        return f"Event(seq={self.seq}, kind={self.kind!r}, task_id={self.task_id!r}, revision={self.revision})"


class Lease(msgspec.Struct, frozen=True, gc=False):
    """A task handed to one worker. ``token`` is backend-specific (e.g. a stream entry id)."""

    record: TaskRecord
    token: str


class CancelOutcome(msgspec.Struct, frozen=True):
    """What ``TaskQueue.request_cancel`` did.

    ``cancelled``: it was queued and is now cancelled (``record`` is the terminal record);
    ``requested``: it is running, its worker was told; ``finished``: too late.
    """

    result: Literal["cancelled", "requested", "finished"]
    record: TaskRecord


class QueueStatistics(msgspec.Struct, frozen=True):
    """How many tasks are where, across every process sharing the queue.

    ``queued`` counts every task not handed to a worker yet; ``scheduled`` is the part of
    them waiting for their time (a delay, or a retry's backoff). ``dead`` counts the failed
    tasks on the list of ``DeadLetters``; ``workers``, the worker processes taking tasks
    from this queue lately (on Redis: heartbeats seen within two lease timeouts; in memory:
    this process, if its workers take tasks). The last
    three are ``None`` when the backend does not count them (their defaults, so that a
    backend written before them still builds this record).
    """

    queued: int
    running: int
    scheduled: int | None = None
    dead: int | None = None
    workers: int | None = None


class RegistryStatistics(msgspec.Struct, frozen=True):
    connections: int
    clients: int


@runtime_checkable
class TaskQueue(Protocol):
    """Hands tasks to workers and stores their records."""

    async def enqueue(self, record: TaskRecord) -> None:
        """Store and queue a new task, to be handed out not before ``record.run_at`` when that
        is set (status ``scheduled``). Raises ``QueueFull`` when at capacity."""

    async def lease(self) -> Lease:
        """Wait for the next runnable task; its ``attempt`` is already bumped."""

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        """Store ``record`` if ``lease`` still holds the task. False: fenced out."""

    async def extend(self, lease: Lease) -> bool:
        """Keep the lease alive (a heartbeat). False: the lease was lost."""

    async def finish(self, lease: Lease) -> None:
        """Acknowledge a task whose terminal record was saved."""

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        """Save ``record`` (status ``queued``) and hand the task back for another attempt,
        not before ``record.run_at`` when that is set (meanwhile it holds no worker)."""

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        """The owner's tasks, newest first; only the newest ``limit`` when given."""

    async def request_cancel(self, task_id: str, owner: str) -> CancelOutcome | None:
        """Cancel atomically; None when no such task belongs to ``owner``."""

    def watch_cancellations(self) -> AsyncIterator[str]:
        """Ids of running tasks whose owner asked to cancel, as they are asked."""

    async def statistics(self) -> QueueStatistics: ...


class EventSink(Protocol):
    """Where a registry delivers an identity's live events for one connection."""

    def deliver(self, event: Event) -> None:
        """Take one event without blocking (buffer, merge or flag an overflow)."""


@runtime_checkable
class ClientRegistry(Protocol):
    """Who is connected, per-identity sequencing, history and delivery."""

    async def publish(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> Event:
        """Give the event the identity's next ``seq``, keep it in history, deliver it live."""

    async def attach(self, identity: str, sink: EventSink) -> None:
        """Deliver the identity's events to ``sink`` from now on (every process)."""

    async def detach(self, identity: str, sink: EventSink) -> None: ...

    async def current_seq(self, identity: str) -> int:
        """The last ``seq`` given to the identity (0 if none)."""

    async def events_after(self, identity: str, seq: int) -> Sequence[Event] | None:
        """Every event after ``seq``, in order; None if history no longer holds them all."""

    def statistics(self) -> RegistryStatistics:
        """Connections and identities attached in this process."""


@runtime_checkable
class FairDispatch(Protocol):
    """A ``TaskQueue`` capability: fair dispatch between owners.

    With it, ``lease`` hands out the waiting tasks round-robin across their owners: no
    owner gets a second turn while another owner with a waiting task, below the cap, waits.
    And no owner has more than the cap of leased (running) tasks at once, counted across
    every process sharing the queue, atomically. A task handed back (``release``) waits
    first in its owner's line. Without this capability the queue is first in, first out.
    """

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Set the cap of running tasks per owner for this queue's leases; None: no cap."""


@runtime_checkable
class DeadLetters(Protocol):
    """A ``TaskQueue`` capability: the failed tasks, for an operator to read and replay.

    Every task stored ``failed`` (its attempts or deliveries used up) is listed, with its last
    error, for as long as its record is kept (the backend's retention) or until forgotten.
    """

    async def dead_letters(self, limit: int) -> Sequence[TaskRecord]:
        """Up to ``limit`` failed tasks, the most recently failed first."""

    async def forget_dead(self, task_id: str) -> bool:
        """Take a task off the list (its record stays); False if it was not on it."""


@runtime_checkable
class UniqueKeys(Protocol):
    """A ``TaskQueue`` capability: unique tasks. At most one unfinished task per owner has a
    given ``key``: ``enqueue`` of a record whose ``key`` its owner's unfinished task has
    already stores nothing and raises ``DuplicateTask``, atomically across every process
    sharing the queue. The key is free again once that task is finished (by any end:
    completed, failed, cancelled, dead)."""

    async def task_with_key(self, owner: str, key: str) -> TaskRecord | None:
        """The owner's unfinished task with ``key``, or None."""


@runtime_checkable
class SlotClaims(Protocol):
    """A ``TaskQueue`` capability, for periodic tasks: claim a named slot once across every
    process sharing the queue, so that a periodic slot fires once however many hubs run."""

    async def claim_slot(self, key: str, ttl: float) -> bool:
        """True for the first claim of ``key`` within ``ttl`` seconds, False for any other."""


@runtime_checkable
class Processor(Protocol):
    """Runs one task. The everyday one is the hub's registry of ``@hub.task`` handlers."""

    async def __call__(self, task: TaskRecord, ctx: Any) -> Any: ...


@runtime_checkable
class Backend(Protocol):
    """A bundle of a queue and a registry, opened and closed as one async resource."""

    @property
    def queue(self) -> TaskQueue: ...

    @property
    def registry(self) -> ClientRegistry: ...

    async def ping(self) -> bool:
        """True when the backend answers."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
