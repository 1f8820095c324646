"""Submitting a task: the part of :class:`~progressq.Hub` that validates and queues it."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from progressq._kinds import KindRegistry, TaskKind
from progressq._logonce import LogOnce, fingerprint
from progressq.contracts import Backend, TaskRecord, utc_now
from progressq.errors import BackendUnavailable, DuplicateTask, HubNotOpen, TooManyTasks, UnknownTaskKind
from progressq.hooks import HookChain, Submission

__all__ = ("Submitting",)

logger = logging.getLogger("progressq.hub")

_MAX_NAME_LENGTH = 200


class Submitting:
    """:meth:`submit`, mixed into :class:`~progressq.Hub`, which sets these attributes up."""

    backend: Backend
    hooks: HookChain
    max_active_per_owner: int | None
    _handlers: KindRegistry
    _over_limit: LogOnce

    if TYPE_CHECKING:  # the hub's own
        _stack: object | None

    async def submit(
        self,
        kind: str,
        *,
        owner: str,
        name: str | None = None,
        params: Any = None,
        payload: Any = None,
        delay: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
    ) -> TaskRecord:
        """Queue a task of ``kind`` for ``owner`` and tell the owner's connections.

        Args:
            kind: a registered task kind.
            owner: the identity the task belongs to; only its connections see the task.
            name: what the owner sees the task called; the kind's name when omitted.
            params: the task's input: an instance of the kind's params type, or builtins
                (a dict...) that validate as one. ``None`` for a kind without params.
            payload: an older name of ``params``.
            delay: run it no sooner than this many seconds from now: it is ``scheduled``
                (its ``run_at`` set) until a worker takes it, and may be cancelled meanwhile.
            at: run it no sooner than this time (timezone-aware), as with ``delay``.
            key: a unique key: while ``owner`` has an unfinished task submitted with this
                key, that task is returned and nothing is queued (atomically across
                processes on a backend with its own ``UniqueKeys``, as Redis; within one
                process with the contract's default); once it finished, the key queues a new
                task. 1 to 200 characters.

        Raises:
            HubNotOpen: the hub was never opened (or is closed).
            UnknownTaskKind: no handler is registered for ``kind``.
            ValidationError: ``params`` do not match the kind's type; nothing was queued.
            QueueFull: the backend is at capacity; nothing was queued.
            TooManyTasks: ``owner`` has ``max_active_per_owner`` unfinished tasks already.
            ValueError: ``name`` or ``key`` is empty or longer than 200 characters,
                ``delay`` is negative, ``at`` is naive, or both are given.
        """
        if self._stack is None:
            raise HubNotOpen()
        run_at = None if delay is None and at is None else _run_at(delay, at)  # most run now: no call
        task_kind = self._handlers.kinds.get(kind)
        if task_kind is None:
            raise UnknownTaskKind(f"no handler is registered for task kind {kind!r}")
        display = (name if name is not None else kind).strip()
        if not 1 <= len(display) <= _MAX_NAME_LENGTH:
            raise ValueError(f"a task name must have 1 to {_MAX_NAME_LENGTH} characters")
        params = params if params is not None else payload
        if key is not None:
            return await self._submit_unique(task_kind, owner, display, params, run_at, key)
        if not self.hooks.hooks:  # ``_submit`` without hooks, a coroutine fewer per submit
            return await self._queue_task(task_kind, owner, display, params, {}, run_at)
        return await self._submit(task_kind, owner, display, params, run_at)

    async def _submit(
        self, kind: TaskKind, owner: str, name: str, params: Any, run_at: datetime | None, key: str | None = None
    ) -> TaskRecord:
        if not self.hooks.hooks:
            return await self._queue_task(kind, owner, name, params, {}, run_at, key)
        submission = Submission(kind=kind.name, owner=owner, name=name)
        with self.hooks.submit(submission):
            submission.record = await self._queue_task(kind, owner, name, params, submission.context, run_at, key)
        return submission.record

    async def _submit_unique(
        self, kind: TaskKind, owner: str, name: str, params: Any, run_at: datetime | None, key: str
    ) -> TaskRecord:
        """``submit`` with a unique ``key``: the owner's unfinished task with it, else a new one."""
        if not 1 <= len(key) <= _MAX_NAME_LENGTH:
            raise ValueError(f"a task's key must have 1 to {_MAX_NAME_LENGTH} characters")
        for _ in range(20):
            holder = await self.backend.queue.task_with_key(owner, key)
            if holder is not None:  # found before any limit is checked: it adds no task
                return holder
            try:
                return await self._submit(kind, owner, name, params, run_at, key)
            except DuplicateTask:
                continue  # a racing submit with the key won: answer with its task (read again)
        raise BackendUnavailable(f"the task with key {key!r} kept changing; nothing was submitted")

    async def _queue_task(
        self,
        kind: TaskKind,
        owner: str,
        name: str,
        params: Any,
        context: dict[str, str],
        run_at: datetime | None,
        key: str | None = None,
    ) -> TaskRecord:
        stored = kind.dump_params(params)
        record = TaskRecord(
            id=self.backend.queue.new_task_id(owner),  # the queue's: it may name where it keeps the task
            kind=kind.name,
            name=name,
            owner=owner,
            payload=stored,
            context=context,
            status="queued" if run_at is None else "scheduled",
            message="" if run_at is None else "scheduled",
            run_at=run_at,
            key=key,
        )
        # queue and announce in one step (where the backend can): no worker publishes the
        # task's "running" before its owner was told it was queued
        active = await self.backend.enqueue_and_announce(record, max_unfinished=self.max_active_per_owner)
        if active is not None:
            self._refuse(owner, active, self.max_active_per_owner or 0)
        return record

    def _refuse(self, owner: str, active: int, limit: int) -> None:
        if self._over_limit.first(owner):
            logger.warning(
                "refused a task: owner %s has %d unfinished tasks (max_active_per_owner=%d); "
                "further refusals for this owner are not logged for a minute",
                fingerprint(owner),
                active,
                limit,
            )
        raise TooManyTasks()


def _run_at(delay: float | None, at: datetime | None) -> datetime | None:
    """When a submitted task may run: ``delay`` seconds from now, or ``at``; None: now."""
    if delay is not None and at is not None:
        raise ValueError("give a task's delay or its time (at), not both")
    if delay is not None:
        if not delay >= 0:
            raise ValueError("a task's delay must be >= 0 seconds")
        return utc_now() + timedelta(seconds=delay) if delay > 0 else None
    if at is not None and at.tzinfo is None:
        raise ValueError("a task's time (at) must be timezone-aware, e.g. datetime.now(UTC)")
    return at
