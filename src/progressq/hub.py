"""The Hub: what an application creates once, registers task handlers on and opens."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TypeVar

import anyio

from progressq._hub_operations import HubOperations
from progressq._kinds import Handler, KindRegistry, TaskKind
from progressq._logonce import LogOnce
from progressq._no_worker import warn_while_no_worker_takes_tasks
from progressq._periodic import Periodic, run_schedules
from progressq._submitting import Submitting
from progressq._worker import TaskPolicy, WorkerPool
from progressq.contracts import Backend, ClientRegistry, TaskQueue, TaskRecord
from progressq.errors import (
    ConfigurationError,
    TaskAlreadyFinished,
    TaskNotFound,
)
from progressq.hooks import HookChain, TaskHooks
from progressq.identity import IdentityAuthority

__all__ = ("Handler", "Hub", "TaskKind")

H = TypeVar("H", bound=Handler)

logger = logging.getLogger("progressq.hub")


class Hub(Submitting, HubOperations):
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
            :meth:`submit` raises ``TooManyTasks`` beyond it. ``None`` for no limit. Checked by the
            backend's ``enqueue_and_announce``: atomically on Redis; by the default (the
            memory backend's), per process, so that with several web processes two submits
            racing each other may both pass.
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
                self.queue.limit_running_per_owner(self.running_per_owner)
                group = await stack.enter_async_context(anyio.create_task_group())
                self._pool = WorkerPool(
                    backend=self.backend,
                    processor=self._handlers,
                    policy_for=self._handlers.policy_for,
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
