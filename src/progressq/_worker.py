"""The worker pool: leases tasks, runs them under policy, turns every outcome into state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel

from progressq._context import TaskContext
from progressq._outage import backend_outage
from progressq._policy import TaskPolicy, error_text, result_summary
from progressq._tasklog import attempt_ended, attempt_started
from progressq.contracts import Backend, Lease, Processor, TaskRecord, utc_now
from progressq.errors import BackendUnavailable, Retry
from progressq.hooks import AttemptOutcome, AttemptStatus, HookChain

__all__ = ("TaskPolicy", "WorkerPool")

logger = logging.getLogger("progressq.worker")

_TAKE_BURST = 0.001
"""Seconds the pool may keep leasing tasks without letting the event loop go round."""


class _Run:
    """One attempt running in this pool.

    One cancel scope stops its handler for every reason: the owner's cancel, a lost lease,
    shutdown and the attempt's timeout (the scope's deadline). The flags say which one it was.
    """

    __slots__ = ("attempt", "cancelled", "lost", "scope", "stopped")

    def __init__(self, attempt: int, scope: anyio.CancelScope) -> None:
        self.attempt = attempt
        self.scope = scope
        self.cancelled = False  # the owner asked
        self.lost = False  # its lease is gone: the handler is stopped, nothing is recorded
        self.stopped = False  # shutdown ran out of grace: the task is handed back

    def cancel(self) -> None:
        """The owner asked: stop the handler; the attempt ends ``cancelled``."""
        self.cancelled = True
        self.scope.cancel()

    def stop(self) -> None:
        """Shutdown ran out of grace: stop the handler; the task goes back to the queue."""
        self.stopped = True
        self.scope.cancel()


class WorkerPool:
    """Runs at most ``concurrency`` tasks at once in the caller's task group."""

    def __init__(
        self,
        *,
        backend: Backend,
        processor: Processor,
        policy_for: Callable[[str], TaskPolicy],
        concurrency: int,
        progress_interval: float,
        shutdown_grace: float,
        hooks: HookChain | None = None,
    ) -> None:
        self._hooks = hooks if hooks is not None else HookChain(())
        self._hooked = bool(self._hooks)  # asked once per attempt; a chain's hooks are fixed
        self._backend = backend
        self._queue = backend.queue
        self._processor = processor
        self._policy_for = policy_for
        self._concurrency = concurrency
        self._progress_interval = progress_interval
        self._shutdown_grace = shutdown_grace
        self._intake = anyio.CancelScope()
        self._runs: dict[str, _Run] = {}  # by task id: the latest attempt running here
        # Free slots, counted here: only ``_take_tasks`` takes them, so a counter and an event
        # to wait on when none is free replace a capacity limiter, whose acquire costs a
        # cancel scope and a turn of the event loop for every task taken.
        self._free_slots = concurrency
        self._slot_freed: anyio.Event | None = None
        self._idle = anyio.Event()
        self._idle.set()
        # On asyncio each attempt runs in a plain asyncio task (see ``_start``), kept here.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plain_runs: set[asyncio.Task[None]] = set()
        # The running event loop's own cancel scope class, made directly: ``anyio.CancelScope()``
        # looks the event loop's library up (sniffio, the current task) for every attempt.
        self._new_scope: Callable[[], anyio.CancelScope] = anyio.CancelScope
        self.alive = False  # between ``run``'s start and its end

    @property
    def running(self) -> int:
        return len(self._runs)

    def stop(self) -> None:
        """Take no new task; running ones get ``shutdown_grace`` seconds, then are handed back."""
        self._intake.cancel()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._loop = _asyncio_loop()
        self._new_scope = type(anyio.CancelScope())
        try:
            async with anyio.create_task_group() as runs:
                runs.start_soon(self._watch_cancellations)
                runs.start_soon(self._watch_lost_leases)
                self.alive = True
                task_status.started()
                try:
                    await self._take_tasks(runs)
                finally:
                    self.alive = False
                with anyio.move_on_after(self._shutdown_grace):
                    await self._idle.wait()
                self._stop_runs()
                runs.cancel_scope.cancel()
        finally:
            if self._plain_runs:  # stopped (the pool itself was cancelled too), and waited for
                self._stop_runs()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(set(self._plain_runs))

    def _stop_runs(self) -> None:
        """Shutdown's grace is over: stop every handler still running; their tasks are handed
        back to the queue."""
        for run in list(self._runs.values()):
            run.stop()

    async def _take_tasks(self, runs: anyio.abc.TaskGroup) -> None:
        """Lease tasks into free slots until :meth:`stop`."""
        with self._intake:
            burst_start = time.monotonic()
            while True:
                while self._free_slots <= 0:
                    self._slot_freed = freed = anyio.Event()
                    await freed.wait()
                    burst_start = time.monotonic()
                leases = await self._queue.lease_many(self._free_slots)  # as many as are free
                for lease in leases:
                    self._free_slots -= 1
                    self._start(runs, lease)
                # A queue with tasks waiting answers a lease at once (the default
                # ``lease_many`` takes one), so a backlog is taken in one go, not one task per
                # turn of the event loop: thousands submitted at once were started at a few
                # hundred a second while the running ones kept the loop busy. The started
                # handlers get the loop after a millisecond of taking, and at once after a
                # lease that waited (a task that came alone runs before the next is taken).
                now = time.monotonic()
                if now - burst_start >= _TAKE_BURST:
                    await anyio.lowlevel.checkpoint()
                    burst_start = time.monotonic()

    def _free_slot(self) -> None:
        self._free_slots += 1
        freed, self._slot_freed = self._slot_freed, None
        if freed is not None:
            freed.set()

    def _start(self, runs: anyio.abc.TaskGroup, lease: Lease) -> None:
        run = _Run(lease.record.attempt, self._new_scope())
        earlier = self._runs.get(lease.record.id)
        if earlier is not None:
            # Its earlier attempt still runs here, yet the task was handed out again: that
            # lease expired (Redis did not answer the heartbeat in time). It is lost.
            self._lose(lease.record.id, earlier.attempt)
        self._runs[lease.record.id] = run
        if len(self._runs) == 1:
            self._idle = anyio.Event()
        if self._loop is None:
            runs.start_soon(self._run_one, runs, lease, run)
            return
        # On asyncio a plain task: anyio's ``start_soon`` makes a cancel scope and an event for
        # every task besides the asyncio task, three times the cost of the task (a tenth of
        # this process's CPU per no-op task on Redis). Nothing cancels these tasks but their
        # own run's scope (``_Run.stop`` at shutdown), and ``run`` waits for them.
        task = self._loop.create_task(self._run_one(runs, lease, run))
        self._plain_runs.add(task)
        task.add_done_callback(self._plain_runs.discard)

    async def _run_one(self, runs: anyio.abc.TaskGroup, lease: Lease, run: _Run) -> None:
        began = attempt_started(lease.record)
        outcome = "interrupted"
        try:
            if self._hooked:
                outcome = await self._hooked_attempt(runs, lease, run)
            else:
                outcome, _ = await self._attempt(runs, lease, run)
        except BackendUnavailable as exc:
            # The worker lives on; with a durable backend the lease expires and the task
            # runs again. Logged once per outage.
            outcome = "unrecorded"
            backend_outage.failed(f"recording the outcome of task {lease.record.id}", exc)
        except Exception:
            # A backend error while recording the outcome: as above, with a traceback.
            outcome = "unrecorded"
            logger.exception("task %s: could not record its outcome", lease.record.id)
        finally:
            attempt_ended(lease.record, outcome, began)
            if self._runs.get(lease.record.id) is run:
                del self._runs[lease.record.id]
            if not self._runs:
                self._idle.set()
            self._free_slot()

    async def _hooked_attempt(self, runs: anyio.abc.TaskGroup, lease: Lease, run: _Run) -> AttemptStatus:
        """:meth:`_attempt` inside the hooks' ``on_attempt``, and its outcome told to them."""
        started = time.monotonic()
        with self._hooks.attempt(lease.record):
            try:
                status, error = await self._attempt(runs, lease, run)
            except BaseException:
                status, error = "interrupted", None
                raise
            finally:
                self._hooks.attempt_ended(lease.record, AttemptOutcome(status, time.monotonic() - started, error))
        return status

    async def _attempt(
        self, runs: anyio.abc.TaskGroup, lease: Lease, run: _Run
    ) -> tuple[AttemptStatus, BaseException | None]:
        record = lease.record
        scope = run.scope
        if record.cancel_requested:  # asked to cancel while its last worker died
            await self._finish(lease, record.evolve(status="cancelled", finished_at=utc_now(), message="cancelled"))
            return "cancelled", None
        running = record.evolve(
            status="running",
            started_at=utc_now(),
            finished_at=None,
            progress=0.0,
            message="started",
            error=None,
            run_at=None,
        )
        # stored if the lease still holds, then sent to its owner
        if not await self._backend.save_and_publish(lease, running, running.view_json()):
            self._lost_write(lease, running)
            return "lost", None
        policy = self._policy_for(record.kind)
        interval = self._progress_interval if policy.progress_interval is None else policy.progress_interval
        ctx = TaskContext(
            running,
            lease=lease,
            save_and_publish=self._backend.save_and_publish,
            save_and_publish_now=self._backend.plain_save_and_publish(),
            on_lost=lambda lost: self._lost_write(lease, lost),
            interval=interval,
            spawn=runs,
        )
        result: Any = None
        error: str | None = None
        raised: BaseException | None = None
        if policy.timeout is not None:
            now = self._loop.time() if self._loop is not None else anyio.current_time()  # (anyio's on asyncio)
            scope.deadline = now + policy.timeout
        try:
            with scope:
                result = await self._processor(running, ctx)
            if scope.cancelled_caught and not run.cancelled and not run.lost and not run.stopped:  # its deadline
                error = f"timed out after {policy.timeout:g} s"
                raised = TimeoutError(error)
        except Retry as exc:
            error, raised = error_text(exc), exc
        except Exception as exc:
            if not run.lost:
                logger.exception("task %s (%s) raised", record.id, record.kind)
            error, raised = error_text(exc), exc
        except BaseException:
            # Shutdown ran out of grace (or the process is going down): hand the task back.
            await self._hand_back(lease, ctx)
            raise
        if run.stopped and scope.cancelled_caught and not run.cancelled and not run.lost:
            return await self._hand_back(lease, ctx)  # by shutdown (``_stop_runs``)
        if run.lost:  # stopped: another worker has the task; nothing to record
            with anyio.CancelScope(shield=True):
                await ctx.close()
            logger.warning("task %s: lease of attempt %d lost; its handler was stopped", record.id, record.attempt)
            return "lost", None
        # The handler is done: its outcome is recorded even if shutdown's cancellation
        # arrives now, or the task would stay "running" with no worker. A plain asyncio task
        # (``_start``) needs no shield: no scope encloses it, and its run's scope is left.
        if self._loop is not None:
            return await self._record_outcome(lease, ctx, policy, run.cancelled, result, error, raised)
        with anyio.CancelScope(shield=True):
            return await self._record_outcome(lease, ctx, policy, run.cancelled, result, error, raised)
        raise AssertionError("unreachable: a shielded scope is not cancelled")  # pragma: no cover

    async def _hand_back(self, lease: Lease, ctx: TaskContext) -> tuple[AttemptStatus, BaseException | None]:
        """Its handler was stopped by shutdown: queue the task again for another worker."""
        with anyio.CancelScope(shield=True):
            latest = await ctx.close()
            await self._requeue(lease, latest.evolve(status="queued", message="interrupted; queued again"))
        return "interrupted", None

    async def _record_outcome(
        self,
        lease: Lease,
        ctx: TaskContext,
        policy: TaskPolicy,
        cancelled: bool,
        result: Any,
        error: str | None,
        raised: BaseException | None,
    ) -> tuple[AttemptStatus, BaseException | None]:
        latest = await ctx.close()
        now = utc_now()
        if cancelled:  # the owner asked, even if the handler swallowed it
            await self._finish(lease, latest.evolve(status="cancelled", finished_at=now, message="cancelled"))
            return "cancelled", None
        if error is not None and raised is not None and latest.attempt < policy.max_attempts and policy.retries(raised):
            after = raised.after if isinstance(raised, Retry) and raised.after is not None else None
            delay = policy.backoff(latest.attempt) if after is None else after
            retry = latest.evolve(
                status="queued",
                message=f"retrying in {delay:.3g} s after: {error}",
                error=error,
                run_at=now + timedelta(seconds=delay),
            )
            await self._requeue(lease, retry)
            return "retrying", raised
        if error is not None:
            await self._finish(lease, latest.evolve(status="failed", finished_at=now, error=error, message="failed"))
            return "failed", raised
        completed = latest.evolve(
            status="completed",
            finished_at=now,
            progress=100.0,
            message=ctx.reported_message or "completed",  # the handler's last word stays
            result=None if result is None else result_summary(result),  # most return nothing: no call
        )
        # ``_finish``, spelled out for the most common end: a coroutine fewer per task
        if not await self._backend.save_and_publish(lease, completed, completed.view_json(), finish=True):
            self._lost_write(lease, completed)
        return "completed", None

    async def _finish(self, lease: Lease, record: TaskRecord) -> None:
        """Store the terminal ``record``, tell its owner and acknowledge the task."""
        if not await self._backend.save_and_publish(lease, record, record.view_json(), finish=True):
            self._lost_write(lease, record)  # (its handler is over: nothing left to stop)

    async def _requeue(self, lease: Lease, record: TaskRecord) -> None:
        # Saved and published before it is handed back, so that no other worker's
        # "running" can reach the client ahead of this "queued".
        if await self._backend.save_and_publish(lease, record, record.view_json()):
            await self._queue.release(lease, record)
        else:
            self._lost_write(lease, record)

    def _lost_write(self, lease: Lease, record: TaskRecord) -> None:
        """A write of ``lease`` was refused: its lease is gone (the task's context calls this
        for its progress reports, which go to the backend directly)."""
        logger.warning("task %s: lease lost, attempt %d writes nothing more", record.id, record.attempt)
        self._lose(record.id, lease.record.attempt)

    def _lose(self, task_id: str, attempt: int) -> None:
        """The lease of ``attempt`` is gone: cancel its handler (another worker may run the
        task now), so that it stops doing the work twice and frees its slot."""
        run = self._runs.get(task_id)
        if run is not None and run.attempt == attempt and not run.lost:
            run.lost = True
            run.scope.cancel()

    async def _watch_lost_leases(self) -> None:
        while True:
            try:
                async for task_id, attempt in self._queue.watch_lost_leases():
                    self._lose(task_id, attempt)
            except Exception:
                logger.warning("lost-lease watch interrupted; retrying", exc_info=True)
                await anyio.sleep(1.0)

    async def _watch_cancellations(self) -> None:
        while True:
            try:
                async for task_id in self._queue.watch_cancellations():
                    run = self._runs.get(task_id)
                    if run is not None:
                        run.cancel()
            except BackendUnavailable as exc:
                backend_outage.failed("watching for cancellations", exc)  # logged once per outage
                await anyio.sleep(1.0)
            except Exception:
                logger.warning("cancellation watch interrupted; retrying", exc_info=True)
                await anyio.sleep(1.0)


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio event loop; None on another (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
