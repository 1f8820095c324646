"""The Hub: what an application creates once, registers task handlers on and opens."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

import anyio

from progressq._hub_operations import HubOperations
from progressq._kinds import Handler, KindRegistry, TaskKind
from progressq._logonce import LogOnce, fingerprint
from progressq._no_worker import warn_while_no_worker_takes_tasks
from progressq._periodic import Periodic, run_schedules
from progressq._worker import TaskPolicy, WorkerPool
from progressq.contracts import (
    Backend,
    ClientRegistry,
    FairDispatch,
    SlotClaims,
    TaskQueue,
    TaskRecord,
    UniqueKeys,
    utc_now,
)
from progressq.errors import (
    BackendUnavailable,
    ConfigurationError,
    DuplicateTask,
    HubNotOpen,
    TaskAlreadyFinished,
    TaskNotFound,
    TooManyTasks,
    UnknownTaskKind,
)
from progressq.hooks import HookChain, Submission, TaskHooks
from progressq.identity import IdentityAuthority

__all__ = ("Handler", "Hub", "TaskKind")

H = TypeVar("H", bound=Handler)

logger = logging.getLogger("progressq.hub")

_MAX_NAME_LENGTH = 200


class AnnouncingEnqueue(Protocol):
    """An optional ``TaskQueue`` capability, for a queue that shares its store with the
    registry: enqueue a task and publish its ``taskQueued`` in one atomic step, checking the
    owner's limit of unfinished tasks in the same step."""

    async def enqueue_and_announce(self, record: TaskRecord, *, max_unfinished: int | None) -> int | None:
        """Store, queue and announce ``record``, unless its owner has ``max_unfinished``
        unfinished tasks already: then nothing, and that count is returned. None: queued.
        Raises ``QueueFull`` like ``enqueue``."""
        ...


class Hub(HubOperations):
    """Task handlers, workers and delivery, on one backend.

    Create one per application, register handlers with :meth:`task`, and open it for the
    application's lifetime (the adapters do that in the app's lifespan)::

        hub = Hub(MemoryBackend(), secret=os.environ["PROGRESSQ_SECRET"])

        class Resize(msgspec.Struct):
            width: int

        @hub.task("resize")
        async def resize(ctx: TaskContext, params: Resize) -> dict[str, int]:
            for step in range(10):
                await ctx.report(step * 10, f"step {step}")
            return {"width": params.width}

        async with hub:
            await hub.submit("resize", owner=client_id, name="holiday.jpg", params=Resize(width=640))

    Args:
        backend: where tasks and events live; a ``MemoryBackend()`` when omitted.
        secret: signs identity ids (see :class:`IdentityAuthority`); when omitted, the
            ``PROGRESSQ_SECRET`` environment variable, else a random secret (with a warning).
        previous_secrets: older secrets still accepted while rotating; when omitted, the
            comma-separated ``PROGRESSQ_PREVIOUS_SECRETS`` environment variable.
        identity_max_age: seconds an identity id stays valid; ``None`` for no expiry.
        concurrency: tasks this process runs at once; 0 for a process that only serves
            clients (workers run elsewhere).
        progress_interval: least seconds between two progress events of one task.
        shutdown_grace: seconds running tasks get to finish when the hub closes.
        max_active_per_owner: unfinished (queued or running) tasks one owner may have;
            :meth:`submit` raises ``TooManyTasks`` beyond it. ``None`` for no limit. Checked
            against the backend's task index, so with several web processes two submits
            racing each other may both pass (not with the Redis backend, whose queue checks
            the limit and enqueues in one atomic step).
        hooks: callbacks around submits and attempts (metrics, traces, your own); see
            :class:`~progressq.hooks.TaskHooks`.
        max_running_per_owner: running tasks one owner may have at once, counted across
            every worker process of the backend; workers take tasks round-robin across the
            owners with waiting tasks. ``None`` (the default): half of ``concurrency``, at
            least 1. Each worker process enforces its own setting: give them all the same.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        secret: str | bytes | None = None,
        previous_secrets: Sequence[str | bytes] = (),
        identity_max_age: float | None = None,
        concurrency: int = 8,
        progress_interval: float = 0.05,
        shutdown_grace: float = 10.0,
        max_active_per_owner: int | None = 100,
        hooks: Sequence[TaskHooks] = (),
        max_running_per_owner: int | None = None,
    ) -> None:
        if concurrency < 0 or progress_interval < 0 or shutdown_grace < 0:
            raise ConfigurationError("concurrency, progress_interval and shutdown_grace must be >= 0")
        if max_active_per_owner is not None and max_active_per_owner < 1:
            raise ConfigurationError("max_active_per_owner must be >= 1 (or None for no limit)")
        if max_running_per_owner is not None and max_running_per_owner < 1:
            raise ConfigurationError("max_running_per_owner must be >= 1 (or None for half the concurrency)")
        if backend is None:
            from progressq.backends.memory import MemoryBackend

            backend = MemoryBackend()
        self.backend: Backend = backend
        if secret is None:
            secret = os.environ.get("PROGRESSQ_SECRET") or None
        if not previous_secrets:
            previous_secrets = [s for s in os.environ.get("PROGRESSQ_PREVIOUS_SECRETS", "").split(",") if s]
        self.identities = IdentityAuthority(secret, previous_secrets=previous_secrets, max_age=identity_max_age)
        self.concurrency = concurrency
        self.progress_interval = progress_interval
        self.shutdown_grace = shutdown_grace
        self.max_active_per_owner = max_active_per_owner
        self.max_running_per_owner = max_running_per_owner
        self._owner_locks: dict[str, tuple[anyio.Lock, int]] = {}
        self._over_limit = LogOnce()
        self._handlers = KindRegistry()
        self.hooks = HookChain(hooks)
        self._pool: WorkerPool | None = None
        self._schedules: list[Periodic] = []
        self._stack: AsyncExitStack | None = None

    @property
    def running_per_owner(self) -> int:
        """The most tasks of one owner this process's workers let run at once."""
        if self.max_running_per_owner is not None:
            return self.max_running_per_owner
        return max(1, self.concurrency // 2)

    @property
    def queue(self) -> TaskQueue:
        return self.backend.queue

    @property
    def registry(self) -> ClientRegistry:
        return self.backend.registry

    @property
    def kinds(self) -> tuple[str, ...]:
        """The names of the registered task kinds."""
        return tuple(self._handlers.kinds)

    @property
    def task_kinds(self) -> Mapping[str, TaskKind]:
        """The registered task kinds by name: handler, params type and policy."""
        return self._handlers.view

    @property
    def is_open(self) -> bool:
        """True between opening and closing the hub."""
        return self._stack is not None

    @property
    def is_running(self) -> bool:
        """True when the hub is open and, if it runs tasks (``concurrency > 0``), its workers run."""
        if self._stack is None:
            return False
        return self.concurrency == 0 or (self._pool is not None and self._pool.alive)

    def task(
        self,
        kind: str | None = None,
        *,
        timeout: float | None = 300.0,
        max_attempts: int = 1,
        progress_interval: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 300.0,
        retry_jitter: bool = True,
    ) -> Callable[[H], H]:
        """Register an async function as the handler of a task kind.

        The handler is ``async def handler(ctx)`` (params: an untyped JSON object, read as
        ``ctx.payload``) or ``async def handler(ctx, params: Params)``, where ``Params`` is a
        msgspec ``Struct`` or any type msgspec validates: :meth:`submit` validates the params
        against it before anything is queued, and the worker hands the handler a ``Params``.
        Plain ``def`` handlers are refused: run blocking work inside an async handler with
        ``await anyio.to_thread.run_sync(...)``.

        Args:
            kind: the name tasks are submitted under; the function's name when omitted.
            timeout: seconds an attempt may run; ``None`` for no limit.
            max_attempts: attempts before a failing task ends ``failed``.
            progress_interval: least seconds between two progress events of one task of
                this kind; the hub's ``progress_interval`` when omitted.
            retry_on: the exception types (a timeout is a ``TimeoutError``) after which a
                task with attempts left runs again; others fail it at once. A handler may
                also ``raise Retry(after=seconds)``.
            retry_backoff: seconds before the second attempt, doubled for each next one;
                the task waits ``queued`` (its ``run_at`` set) and holds no worker.
            retry_backoff_max: the most seconds between two attempts.
            retry_jitter: wait a random 50-100 % of the backoff.

        Raises:
            ConfigurationError: the kind is taken, the handler is not async, or its params
                annotation is missing or not a type msgspec can validate.
        """
        if max_attempts < 1 or (timeout is not None and timeout <= 0):
            raise ConfigurationError("max_attempts must be >= 1 and timeout > 0")
        if progress_interval is not None and progress_interval < 0:
            raise ConfigurationError("progress_interval must be >= 0")
        if retry_backoff < 0 or retry_backoff_max < 0:
            raise ConfigurationError("retry_backoff and retry_backoff_max must be >= 0")
        policy = TaskPolicy(
            timeout=timeout,
            max_attempts=max_attempts,
            progress_interval=progress_interval,
            retry_on=retry_on if isinstance(retry_on, tuple) else (retry_on,),
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_jitter=retry_jitter,
        )

        def register(handler: H) -> H:
            self._handlers.register(kind, handler, policy)
            return handler

        return register

    # --- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> Hub:
        if self._stack is not None:
            raise ConfigurationError("this hub is already open")
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.backend)
            if self.concurrency:
                if isinstance(self.queue, FairDispatch):
                    self.queue.limit_running_per_owner(self.running_per_owner)
                group = await stack.enter_async_context(anyio.create_task_group())
                self._pool = WorkerPool(
                    queue=self.queue,
                    processor=self._handlers,
                    policy_for=self._handlers.policy_for,
                    publish=self._publish_change,
                    concurrency=self.concurrency,
                    progress_interval=self.progress_interval,
                    shutdown_grace=self.shutdown_grace,
                    hooks=self.hooks,
                )
                await group.start(self._pool.run)
            else:  # tasks run in other processes: say so if none seems to
                group = await stack.enter_async_context(anyio.create_task_group())
                group.start_soon(warn_while_no_worker_takes_tasks, self.queue, self.backend)
                stack.callback(group.cancel_scope.cancel)
            if self._schedules:
                if not isinstance(self.queue, SlotClaims):
                    raise ConfigurationError(f"{type(self.queue).__name__} cannot run periodic tasks")
                schedules = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(schedules.cancel_scope.cancel)  # on close, before the group is left
                schedules.start_soon(run_schedules, self._schedules, self.queue, self._fire)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if self._pool is not None:
            self._pool.stop()
        self._pool = None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    # --- operations ----------------------------------------------------------------------

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
                key, that task is returned and nothing is queued (atomically, across
                processes, on a backend with ``UniqueKeys``); once it finished, the key
                queues a new task. 1 to 200 characters.

        Raises:
            HubNotOpen: the hub was never opened (or is closed).
            UnknownTaskKind: no handler is registered for ``kind``.
            ValidationError: ``params`` do not match the kind's type; nothing was queued.
            QueueFull: the backend is at capacity; nothing was queued.
            TooManyTasks: ``owner`` has ``max_active_per_owner`` unfinished tasks already.
            ValueError: ``name`` or ``key`` is empty or longer than 200 characters,
                ``delay`` is negative, ``at`` is naive, or both are given.
            ConfigurationError: a ``key`` for a backend without ``UniqueKeys``.
        """
        if self._stack is None:
            raise HubNotOpen()
        run_at = _run_at(delay, at)
        task_kind = self._handlers.kinds.get(kind)
        if task_kind is None:
            raise UnknownTaskKind(f"no handler is registered for task kind {kind!r}")
        display = (name if name is not None else kind).strip()
        if not 1 <= len(display) <= _MAX_NAME_LENGTH:
            raise ValueError(f"a task name must have 1 to {_MAX_NAME_LENGTH} characters")
        params = params if params is not None else payload
        if key is not None:
            return await self._submit_unique(task_kind, owner, display, params, run_at, key)
        return await self._submit(task_kind, owner, display, params, run_at)

    async def _submit(
        self, kind: TaskKind, owner: str, name: str, params: Any, run_at: datetime | None, key: str | None = None
    ) -> TaskRecord:
        if not self.hooks:
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
        if not isinstance(self.queue, UniqueKeys):
            raise ConfigurationError(f"{type(self.queue).__name__} cannot keep tasks unique by key")
        for _ in range(20):
            holder = await self.queue.task_with_key(owner, key)
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
            id=secrets.token_urlsafe(12),
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
        if hasattr(self.queue, "enqueue_and_announce"):  # one atomic step: limit, enqueue, announce
            queue = cast(AnnouncingEnqueue, self.queue)
            active = await queue.enqueue_and_announce(record, max_unfinished=self.max_active_per_owner)
            if active is not None:
                self._refuse(owner, active, self.max_active_per_owner or 0)
            return record
        if self.max_active_per_owner is None:
            await self.queue.enqueue(record)
        else:
            async with self._owner_lock(owner):  # this process's submits for one owner: one at a time
                if key is not None:  # a submit answered with the holder of its key adds no task
                    await self._check_key(owner, key)
                await self._check_active(owner, self.max_active_per_owner)
                await self.queue.enqueue(record)
        await self.registry.publish(owner, "taskQueued", record.id, record.revision, record.view_json())
        return record

    @contextlib.asynccontextmanager
    async def _owner_lock(self, owner: str) -> AsyncIterator[None]:
        lock, users = self._owner_locks.get(owner) or (anyio.Lock(), 0)
        self._owner_locks[owner] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._owner_locks[owner]
            if users == 1:
                del self._owner_locks[owner]
            else:
                self._owner_locks[owner] = (lock, users - 1)

    async def _check_key(self, owner: str, key: str) -> None:
        holder = await cast(UniqueKeys, self.queue).task_with_key(owner, key)
        if holder is not None:
            raise DuplicateTask(holder.id)

    async def _check_active(self, owner: str, limit: int) -> None:
        active = sum(1 for record in await self.queue.list_by_owner(owner) if not record.finished)
        if active >= limit:
            self._refuse(owner, active, limit)

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

    async def get(self, task_id: str, *, owner: str) -> TaskRecord:
        """One of ``owner``'s tasks. Raises ``TaskNotFound`` for any other id."""
        record = await self.queue.get(task_id)
        if record is None or record.owner != owner:
            raise TaskNotFound(task_id)
        return record

    async def list(self, *, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        """``owner``'s tasks, newest first; only the newest ``limit`` when given."""
        if limit is None:  # the call every backend has always taken
            return await self.queue.list_by_owner(owner)
        return await self.queue.list_by_owner(owner, limit=limit)

    async def cancel(self, task_id: str, *, owner: str) -> TaskRecord:
        """Cancel one of ``owner``'s tasks: a queued one never starts, a running one is cancelled.

        Raises:
            TaskNotFound: no such task belongs to ``owner``.
            TaskAlreadyFinished: it already reached a terminal state.
        """
        outcome = await self.queue.request_cancel(task_id, owner)
        if outcome is None:
            raise TaskNotFound(task_id)
        if outcome.result == "finished":
            raise TaskAlreadyFinished(task_id)
        if outcome.result == "cancelled":
            await self._publish_change(outcome.record)
        return outcome.record

    async def healthy(self) -> bool:
        """True when the hub runs (see :attr:`is_running`) and the backend answers."""
        if not self.is_running:
            return False
        try:
            with anyio.fail_after(2.0):
                return await self.backend.ping()
        except Exception:
            return False

    async def _publish_change(self, record: TaskRecord) -> None:
        await self.registry.publish(record.owner, "taskProgress", record.id, record.revision, record.view_json())


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
