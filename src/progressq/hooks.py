"""Hooks around a task's life: the one seam for metrics, traces and the app's own logic.

Subclass :class:`TaskHooks`, override what you need and pass instances to
``Hub(hooks=[...])``::

    class AuditHooks(TaskHooks):
        def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
            audit_log.info("%s %s %s", record.kind, record.id, outcome.status)

Submit hooks run in the process that calls ``hub.submit`` (a web process); attempt hooks in
the worker that runs the attempt, which may be another process on another machine: what a
submit hook writes into ``Submission.context`` is stored with the task and handed to the
attempt hooks as ``record.context`` (tracing uses it to join the two halves of a trace).

A hook must be quick. An exception raised by a hook is logged (once a minute per hook) and
otherwise ignored: a broken exporter never fails a task or a request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Literal

from progressq._logonce import LogOnce
from progressq.contracts import TaskRecord

__all__ = ("AttemptOutcome", "AttemptStatus", "Submission", "TaskHooks")

logger = logging.getLogger("progressq.hooks")

AttemptStatus = Literal["completed", "failed", "retrying", "cancelled", "interrupted", "lost"]
"""How an attempt ended: ``retrying`` failed with attempts left; ``interrupted`` was cut by
shutdown and handed back to the queue; ``lost`` found its lease taken over by another worker."""


@dataclass(slots=True)
class Submission:
    """One call of ``hub.submit``, as the submit hooks see it.

    Attributes:
        kind: the task kind.
        owner: the identity the task is for. An identity id is a capability: use it to
            decide, never write it to a log, a metric label or a span.
        name: the display name.
        context: string pairs stored with the task (``record.context``); hooks may add to it
            before the task is queued, e.g. a trace context.
        record: the queued task, once it is queued (``None`` while submitting, and when the
            submission was refused).
    """

    kind: str
    owner: str
    name: str
    context: dict[str, str] = field(default_factory=dict)
    record: TaskRecord | None = None


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """How one attempt of a task ended.

    Attributes:
        status: see :data:`AttemptStatus`.
        elapsed: seconds from the attempt's start to its end, on the monotonic clock.
        error: the handler's exception (``failed``, ``retrying``), else ``None``; a timeout
            is a ``TimeoutError``.
    """

    status: AttemptStatus
    elapsed: float
    error: BaseException | None = None


class TaskHooks:
    """Callbacks around submits and attempts. Every default does nothing."""

    def on_submit(self, submission: Submission) -> AbstractContextManager[None]:
        """Entered before a task is validated and queued, exited after: with no exception
        when it was queued (``submission.record`` is set), with the refusal otherwise
        (``ValidationError``, ``TooManyTasks``, ``QueueFull``, ...), which propagates."""
        return contextlib.nullcontext()

    def on_attempt(self, record: TaskRecord) -> AbstractContextManager[None]:
        """Entered when a worker starts an attempt (``record.attempt`` counts from 1), exited
        when the attempt's last event has been stored and published. The handler runs
        inside it, so a context it sets (a current span) is the handler's too."""
        return contextlib.nullcontext()

    def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
        """Called once per attempt, inside :meth:`on_attempt`, with how it ended."""


class HookChain:
    """The hub's hooks, each guarded so that a failing one is logged and skipped."""

    def __init__(self, hooks: Sequence[TaskHooks]) -> None:
        self.hooks = tuple(hooks)
        self._failed = LogOnce()

    def __bool__(self) -> bool:
        return bool(self.hooks)

    @contextlib.contextmanager
    def submit(self, submission: Submission) -> Iterator[None]:
        with ExitStack() as stack:
            for hook in self.hooks:
                self._enter(stack, hook, partial(hook.on_submit, submission))
            yield

    @contextlib.contextmanager
    def attempt(self, record: TaskRecord) -> Iterator[None]:
        with ExitStack() as stack:
            for hook in self.hooks:
                self._enter(stack, hook, partial(hook.on_attempt, record))
            yield

    def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
        for hook in self.hooks:
            try:
                hook.attempt_ended(record, outcome)
            except Exception:
                self._log(hook)

    def _enter(self, stack: ExitStack, hook: TaskHooks, make: Callable[[], AbstractContextManager[None]]) -> None:
        try:
            manager = make()
            manager.__enter__()
        except Exception:
            self._log(hook)
            return

        def leave(exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
            try:
                manager.__exit__(exc_type, exc, tb)
            except Exception:
                self._log(hook)
            return False  # a hook never swallows the step's own exception

        stack.push(leave)

    def _log(self, hook: TaskHooks) -> None:
        name = type(hook).__qualname__
        if self._failed.first(name):
            logger.exception("hook %s failed; ignored (further failures of it are not logged for a minute)", name)
