"""The records a backend stores and moves: tasks, leases, events, statistics.

Part of the backend contract; import them from :mod:`progressq.contracts`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import msgspec

from progressq.messages import TERMINAL_STATUSES, EventType, TaskStatus, TaskView, frame_event_text

__all__ = (
    "CancelOutcome",
    "Event",
    "Lease",
    "QueueStatistics",
    "RegistryStatistics",
    "TaskRecord",
    "utc_now",
)


utc_now: Callable[[], datetime] = partial(datetime.now, UTC)
"""The time now, in UTC. A partial, not a function: it runs in C, and every task calls it a
few times (its creation, as ``created_at``'s default, its start and its end)."""

# The views' encoder: msgspec's defaults, as ``messages.encode``'s. Called directly by
# ``view_json``, a step fewer for each of a task's events.
_encode_view = msgspec.json.Encoder().encode


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
        return _encode_view(self.view())


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
        text = self.frame_text
        if text is None:
            text = self.frame_text = frame_event_text(self.kind, self.seq, self.task_json)
        return text

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
