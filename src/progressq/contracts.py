"""The backend contract: everything the engine asks of a backend, and what it must guarantee.

A backend is a :class:`Backend`: a bundle of a :class:`TaskQueue` and a :class:`ClientRegistry`.
Each protocol names every operation the engine calls. Some are *required*; the others are
*capabilities* with a default that :class:`QueueDefaults` and :class:`BackendDefaults` write in
terms of the required ones. A backend subclasses the defaults and overrides what it can do
better (in one round trip, atomically, fairly); the engine calls the operations alike on any
backend, never asking which ones it implements itself. ``progressq.testing``'s conformance
suite holds a backend to all of it, defaults included.

The engine owns policy (identity, sequencing, coalescing, retries); backends move records and
bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from progressq._defaults import BackendDefaults, QueueDefaults, SinkDefaults
from progressq._records import (
    CancelOutcome,
    Event,
    Lease,
    QueueStatistics,
    RegistryStatistics,
    TaskRecord,
    utc_now,
)
from progressq.messages import EventType

__all__ = (
    "AnnouncingEnqueue",
    "Backend",
    "BackendDefaults",
    "BatchLeasing",
    "CancelOutcome",
    "ClientRegistry",
    "DeadLetters",
    "Description",
    "Event",
    "EventSink",
    "FairDispatch",
    "Lease",
    "LeaseLossWatching",
    "Processor",
    "QueueDefaults",
    "QueueStatistics",
    "RegistryStatistics",
    "SaveAndPublish",
    "SinkDefaults",
    "SlotClaims",
    "TaskIds",
    "TaskQueue",
    "TaskRecord",
    "UniqueKeys",
    "utc_now",
)


# --- the queue's capabilities (defaults: QueueDefaults) ------------------------------------


class BatchLeasing(Protocol):
    """A ``TaskQueue`` capability: lease several tasks in one go.

    Default: one :meth:`TaskQueue.lease`.
    """

    async def lease_many(self, limit: int) -> Sequence[Lease]:
        """Wait for the next runnable tasks: at least one, at most ``limit`` (the worker
        pool's free slots), each leased exactly as :meth:`TaskQueue.lease` leases one (its
        ``attempt`` bumped, counted as running, under the fair-dispatch cap). Never more than
        ``limit``: the pool has no slot for a surplus lease."""
        ...


class LeaseLossWatching(Protocol):
    """A ``TaskQueue`` capability, for a queue that keeps leases alive itself (a heartbeat):
    it tells the pool of the leases it found lost, so that their handlers stop.

    Default: never tells (a queue without a heartbeat loses a lease only through the engine's
    own calls, whose ``False`` the engine sees).
    """

    def watch_lost_leases(self) -> AsyncIterator[tuple[str, int]]:
        """``(task id, attempt)`` of each lease held in this process that was found taken
        over, once each, as it is found; runs until the caller stops iterating."""
        ...


class FairDispatch(Protocol):
    """A ``TaskQueue`` capability: fair dispatch between owners.

    With it, ``lease`` hands out the waiting tasks round-robin across their owners: no
    owner gets a second turn while another owner with a waiting task, below the cap, waits.
    And no owner has more than the cap of leased (running) tasks at once, counted across
    every process sharing the queue, atomically. A task handed back (``release``) waits
    first in its owner's line.

    Default: the cap is ignored; tasks go out in the queue's own order (``lease``: first in,
    first out within each owner).
    """

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Set the cap of running tasks per owner for this queue's leases; None: no cap.
        The hub calls it once, before its workers lease anything."""
        ...


class DeadLetters(Protocol):
    """A ``TaskQueue`` capability: the failed tasks, for an operator to read and replay.

    Every task stored ``failed`` (its attempts or deliveries used up) is listed, with its last
    error, for as long as its record is kept (the backend's retention) or until forgotten.

    Default: no list; both methods raise ``ConfigurationError`` saying so.
    """

    async def dead_letters(self, limit: int) -> Sequence[TaskRecord]:
        """Up to ``limit`` failed tasks, the most recently failed first."""
        ...

    async def forget_dead(self, task_id: str) -> bool:
        """Take a task off the list (its record stays); False if it was not on it."""
        ...


class UniqueKeys(Protocol):
    """A ``TaskQueue`` capability: unique tasks. At most one unfinished task per owner has a
    given ``key``: ``enqueue`` of a record whose ``key`` its owner's unfinished task has
    already stores nothing and raises ``DuplicateTask``, atomically across every process
    sharing the queue. The key is free again once that task is finished (by any end:
    completed, failed, cancelled, dead).

    Default: the owner's unfinished task with the key is looked for in ``list_by_owner``, and
    ``enqueue`` itself does not refuse; ``BackendDefaults.enqueue_and_announce`` refuses a
    duplicate under its per-owner lock, so that a key is unique within one process only.
    """

    async def task_with_key(self, owner: str, key: str) -> TaskRecord | None:
        """The owner's unfinished task with ``key``, or None."""
        ...


class SlotClaims(Protocol):
    """A ``TaskQueue`` capability, for periodic tasks: claim a named slot once across every
    process sharing the queue, so that a periodic slot fires once however many hubs run.

    Default: claims kept in this queue object: right for a queue no other process shares,
    wrong for one that is shared (the conformance suite's ``shared_state`` check fails it).
    """

    async def claim_slot(self, key: str, ttl: float) -> bool:
        """True for the first claim of ``key`` within ``ttl`` seconds, False for any other,
        atomically across every process sharing the queue."""
        ...


class TaskIds(Protocol):
    """A ``TaskQueue`` capability: the ids of new tasks. The hub asks the queue for the id of
    each task it submits, so that a queue that spreads its tasks over several places (the
    Redis backend's shards on Redis Cluster) can name the place in the id, and later find a
    task from its id alone.

    Default: 16 random URL-safe characters (``secrets.token_urlsafe(12)``), never starting
    with ``-`` (ids are typed on command lines, where a leading ``-`` reads as an option).
    """

    def new_task_id(self, owner: str) -> str:
        """A new task id for a task of ``owner``: unique (random, 96 bits or more), of
        URL-safe characters (letters, digits, ``-_.~``). A queue must still take records
        whose ids it did not mint, and find them by id. A sharded queue (the Redis backend
        with several shards) checks such an id for duplicates only within its owner's shard:
        only the ids it mints are unique across the whole queue."""
        ...


# --- the queue -----------------------------------------------------------------------------


@runtime_checkable
class TaskQueue(BatchLeasing, LeaseLossWatching, FairDispatch, DeadLetters, UniqueKeys, SlotClaims, TaskIds, Protocol):
    """Hands tasks to workers and stores their records.

    Required: the methods below. The capabilities it inherits (``lease_many``,
    ``watch_lost_leases``, ``limit_running_per_owner``, ``dead_letters``, ``forget_dead``,
    ``task_with_key``, ``claim_slot``, ``new_task_id``) have defaults in :class:`QueueDefaults`.

    **Fencing.** ``lease`` bumps the task's ``attempt``; every write through a lease
    (``save``, ``extend``, ``finish``, ``release``) carries it and is refused (``False``, or
    nothing for ``finish``) once the task was leased again, handed back, or finished. A
    stored ``revision`` only rises. A task is leased to one worker at a time.
    """

    async def enqueue(self, record: TaskRecord) -> None:
        """Store and queue a new task, to be handed out not before ``record.run_at`` when that
        is set (status ``scheduled``). Atomic: stored and queued, or (raising) neither.
        Publishes nothing: ``Backend.enqueue_and_announce`` is the submit that tells the owner.
        Raises ``QueueFull`` when ``capacity`` tasks wait already (a task handed back with
        ``release`` always fits; on a sharded queue capacity holds per shard, so up to
        ``capacity`` times the shards wait in all), ``DuplicateTask`` for a ``record.key`` its owner's unfinished
        task has (with its own ``UniqueKeys``); a task id stored already is refused with an error."""

    async def lease(self) -> Lease:
        """Wait for the next runnable task and hand it to this caller alone, its ``attempt``
        (and ``revision``) bumped and stored; it counts as running until it is finished or
        handed back. Tasks of one owner are handed out in the order they were queued."""

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        """Store ``record`` if ``lease`` still holds the task (fencing); False: fenced out,
        nothing stored. A terminal ``record`` stops the task counting as running, and nothing
        changes a finished task afterwards. A cancel asked meanwhile stays asked."""

    async def extend(self, lease: Lease) -> bool:
        """Keep the lease alive (a heartbeat). False: the lease was lost (the task was leased
        again, handed back or finished), and nothing changed."""

    async def finish(self, lease: Lease) -> None:
        """Acknowledge a task whose terminal record was saved; nothing for a stale lease.
        Idempotent."""

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        """Save ``record`` (status ``queued``) and hand the task back for another attempt,
        first in its owner's line, and not before ``record.run_at`` when that is set
        (meanwhile it holds no worker). Atomic; False: fenced out, nothing changed."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """The stored record, or None (unknown, or forgotten after the retention)."""

    async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        """The owner's tasks, newest first; only the newest ``limit`` when given."""

    async def request_cancel(self, task_id: str, owner: str) -> CancelOutcome | None:
        """Cancel atomically; None when no such task belongs to ``owner``. A waiting task is
        stored ``cancelled`` and never leased; a leased one is flagged (``cancel_requested``)
        and its worker told through :meth:`watch_cancellations`."""

    def watch_cancellations(self) -> AsyncIterator[str]:
        """Ids of the tasks leased in this process whose owner asked to cancel, as they are
        asked (across processes). Telling one twice is harmless; missing one is not."""

    async def statistics(self) -> QueueStatistics:
        """How many tasks wait (queued or scheduled) and run, across every process."""


# --- the registry --------------------------------------------------------------------------


class EventSink(Protocol):
    """Where a registry delivers an identity's live events for one connection. Both members
    are called by the registry, and neither may block; a sink with nothing to redo after a
    loss of history takes ``resync`` from :class:`SinkDefaults` (it does nothing)."""

    def deliver(self, event: Event) -> None:
        """Take one event without blocking (buffer, merge or flag an overflow)."""

    def resync(self) -> None:
        """The registry lost the identity's history (its store came back without its data,
        or the events missed while its subscription was down are no longer kept): the
        events delivered next do not follow on from those before. A connection's sink holds
        what arrives and sends its client a fresh snapshot."""


@runtime_checkable
class ClientRegistry(Protocol):
    """Who is connected, per-identity sequencing, history and delivery. All required."""

    async def publish(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> Event:
        """Give the event the identity's next ``seq`` (gapless from 1, atomically across
        processes), keep it in history and deliver it live to every sink attached to the
        identity, in any process, in ``seq`` order. A backend may drop an event about a
        stored task whose stored revision is newer, or already published (``seq`` 0)."""

    async def attach(self, identity: str, sink: EventSink) -> None:
        """Deliver the identity's events to ``sink`` from now on, whichever process publishes
        them: every event published after this returns, once each, in ``seq`` order."""

    async def detach(self, identity: str, sink: EventSink) -> None:
        """Stop delivering to ``sink``; harmless when it is not attached."""

    async def current_seq(self, identity: str) -> int:
        """The last ``seq`` given to the identity (0 if none)."""

    async def events_after(self, identity: str, seq: int) -> Sequence[Event] | None:
        """Every event after ``seq``, in order; None if history no longer holds them all
        (never a partial answer)."""

    def statistics(self) -> RegistryStatistics:
        """Connections and identities attached in this process."""


# --- the bundle ----------------------------------------------------------------------------


class AnnouncingEnqueue(Protocol):
    """A ``Backend`` capability: submit a task in one step, spanning queue and registry.

    Default: under a lock per owner in this process, refuse a duplicate unique key
    (``task_with_key``), count the owner's unfinished tasks (``list_by_owner``), ``enqueue``,
    then publish ``taskQueued``. Two processes submitting
    for one owner at once may then both pass the limit, and a worker in another process may
    publish the task's ``running`` before its ``taskQueued``.
    """

    async def enqueue_and_announce(self, record: TaskRecord, *, max_unfinished: int | None) -> int | None:
        """Store and queue ``record`` (as ``TaskQueue.enqueue``) and publish its
        ``taskQueued`` to its owner, unless the owner has ``max_unfinished`` unfinished
        (queued, scheduled or running) tasks already: then nothing, and that count is
        returned. None: queued and announced. A backend that can, does it atomically, so
        that no worker takes the task before its owner was told, and racing submits cannot
        both pass the limit. Raises ``QueueFull`` like ``enqueue``, and ``DuplicateTask``
        when the owner has an unfinished task with ``record.key`` (checked before the limit:
        a submit answered with that task adds none); nothing queued either way."""
        ...


class Description(Protocol):
    """A ``Backend`` capability: say which backend this is and where its data lives, for
    the log lines an operator compares between processes (a worker's startup line; the
    warning of a web process whose queued tasks no worker takes).

    Default: the backend's class name.
    """

    def describe(self) -> str:
        """One line: the backend's class and where it keeps its data (a URL without its
        password, a key prefix or schema), the same in every process using the same data."""
        ...


class SaveAndPublish(Protocol):
    """A ``Backend`` capability: record a task's change and tell its owner in one step.

    Default: ``queue.save``; if stored, ``registry.publish`` (``taskProgress``); then, with
    ``finish``, ``queue.finish``. And no plain form (``plain_save_and_publish`` answers None):
    every progress report awaits ``save_and_publish``.
    """

    async def save_and_publish(
        self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> bool:
        """Store ``record`` if ``lease`` still holds (fenced as ``TaskQueue.save``), publish
        it to its owner (``taskProgress``, its view ``view_json``) and, with ``finish``,
        acknowledge the task (``TaskQueue.finish``). False: fenced out, and nothing was
        published or acknowledged. A backend that can make these one atomic step keeps a
        worker paused between save and publish from publishing a stale view."""
        ...

    def plain_save_and_publish(self) -> Callable[[Lease, TaskRecord, bytes], bool] | None:
        """``save_and_publish`` without ``finish`` as a plain function, for a backend whose
        step never waits (the memory backend's); None where it waits. The worker asks once
        per attempt, and that attempt's progress reports call the function instead of
        awaiting ``save_and_publish``: a coroutine less per report. It must do exactly what
        ``save_and_publish`` does (fenced, published, the same answer); a backend whose
        ``save_and_publish`` is replaced (by a subclass, or on the instance) answers None,
        so that the reports reach the replacement."""
        ...


@runtime_checkable
class Backend(AnnouncingEnqueue, SaveAndPublish, Description, Protocol):
    """A bundle of a queue and a registry, opened and closed as one async resource.

    Required: the members below. The operations spanning both (``enqueue_and_announce``,
    ``save_and_publish``, ``plain_save_and_publish``) and ``describe`` have defaults in
    :class:`BackendDefaults`.
    """

    @property
    def queue(self) -> TaskQueue: ...

    @property
    def registry(self) -> ClientRegistry: ...

    async def ping(self) -> bool:
        """True when the backend answers; False (never an exception) when it does not."""

    async def __aenter__(self) -> Any:
        """Open: connect, start what runs in the background. The hub opens its backend first
        and closes it last."""

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close: stop the background work and release the connections."""


@runtime_checkable
class Processor(Protocol):
    """Runs one task. The everyday one is the hub's registry of ``@hub.task`` handlers."""

    async def __call__(self, task: TaskRecord, ctx: Any) -> Any: ...
