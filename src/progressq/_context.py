"""What a task handler gets: its task's data and a cheap, rate-limited ``report``."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from msgspec.structs import replace

from progressq._outage import backend_outage
from progressq._progress_view import ProgressView
from progressq.contracts import Lease, TaskRecord
from progressq.errors import BackendUnavailable

__all__ = ("TaskContext",)

logger = logging.getLogger("progressq.worker")

_MAX_MESSAGE_LENGTH = 1000
_NUMBER = (int, float)  # a tuple: ``int | float`` would build a union on every report


_YIELD_EVERY = 0.001
"""Seconds a handler may keep reporting without the event loop going round (a burst) before
``report`` yields to it."""


class _LoopTurns:
    """Counts the turns of an asyncio event loop, cheaply: only a turn in which someone asked
    (read ``turn``, then ``arm`` it unless ``armed``) schedules the callback that counts it.
    Two reports that see the same turn were made without the loop running anything else in
    between."""

    __slots__ = ("_loop", "armed", "turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.armed = False  # the count of this turn is scheduled
        self.turn = 0

    def arm(self) -> None:
        self.armed = True
        self._loop.call_soon(self._advance)  # runs on the next turn

    def _advance(self) -> None:
        self.turn += 1
        self.armed = False


_turns_of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopTurns] = weakref.WeakKeyDictionary()


def _loop_turns() -> _LoopTurns | None:
    """The running asyncio loop's turn counter; None elsewhere (trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    turns = _turns_of_loop.get(loop)
    if turns is None:
        turns = _turns_of_loop[loop] = _LoopTurns(loop)
    return turns


async def _sleep_until(deadline: float) -> None:
    """Sleep until ``deadline`` on the ``time.monotonic()`` clock."""
    await anyio.sleep(max(0.0, deadline - time.monotonic()))


class TaskContext:
    """Handed to a task handler: the task's data and progress reporting.

    ``await ctx.report(percent, message)`` may be called as often as the handler likes:
    at most one progress event per task per ``interval`` is emitted, always carrying the
    latest values, and the last report is never lost. Progress never goes backwards
    within an attempt (a lower percent keeps the higher one). Cancellation (by the owner,
    a timeout or shutdown) arrives as an ordinary anyio cancellation at the handler's
    next ``await``.
    """

    def __init__(
        self,
        record: TaskRecord,
        *,
        lease: Lease,
        save_and_publish: Callable[[Lease, TaskRecord, bytes], Awaitable[bool]],
        save_and_publish_now: Callable[[Lease, TaskRecord, bytes], bool] | None = None,
        on_lost: Callable[[TaskRecord], None],
        interval: float,
        spawn: TaskGroup,
    ) -> None:
        self._record = record
        # The backend's own ``save_and_publish`` and the lease, called directly: a report
        # passes no worker layer on its way to the backend. ``save_and_publish_now`` is the
        # same step as a plain call, where the backend has one (``plain_save_and_publish``):
        # a report then makes no coroutine for its commit. ``on_lost`` tells the worker of a
        # commit answered False (the lease was taken over), once.
        self._lease = lease
        self._save_and_publish = save_and_publish
        self._save_and_publish_now = save_and_publish_now
        self._on_lost = on_lost
        self._view = ProgressView(record)  # every record it commits differs in progress and message only
        self._interval = interval
        self._spawn = spawn
        self._percent = record.progress
        self._message = record.message
        self._reported_message: str | None = None
        self._dirty = False
        self._closed = False
        self._flush_scheduled = False
        self._next_emit = -math.inf
        # Rate limiting and yielding run on time.monotonic(): one cheap clock on every event
        # loop (anyio.current_time() asks which loop runs on every call).
        self._turns = _loop_turns()
        self._turn = -1  # the loop's turn at the last report
        self._burst_start = -math.inf
        self._next_yield = -math.inf  # where the loop's turns are not counted (trio)
        self._emitting = False  # an emission is in flight (in ``report`` or the flush)
        self._emitted: anyio.Event | None = None  # made only when ``close`` must wait for one

    @property
    def task_id(self) -> str:
        return self._record.id

    @property
    def kind(self) -> str:
        return self._record.kind

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def owner(self) -> str:
        return self._record.owner

    @property
    def payload(self) -> Any:
        """The task's params as stored: JSON builtins (a dict for a kind without a params
        type). A typed handler receives them decoded as its second argument."""
        return self._record.payload

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self._record.attempt

    @property
    def reported_message(self) -> str | None:
        """The last message the handler reported in this attempt; None if it reported none."""
        return self._reported_message

    @property
    def progress(self) -> float:
        """The latest reported percent."""
        return self._percent

    async def report(self, percent: float, message: str | None = None) -> None:
        """Report progress (0 to 100) and optionally a short message.

        Raises:
            ValueError: ``percent`` is not a number from 0 to 100.
        """
        kind = type(percent)
        if (kind is not float and kind is not int) and (  # the common types first: cheapest
            isinstance(percent, bool) or not isinstance(percent, _NUMBER)
        ):
            raise ValueError(f"percent must be a number from 0 to 100, got {percent!r}")
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be a number from 0 to 100, got {percent!r}")
        if self._closed:
            return
        if percent > self._percent:
            self._percent = percent if kind is float else float(percent)
        if message is not None:
            if type(message) is not str:  # calling ``str`` on a str costs a type call per report
                message = str(message)
            if len(message) > _MAX_MESSAGE_LENGTH:
                message = message[:_MAX_MESSAGE_LENGTH]
            self._message = self._reported_message = message
        self._dirty = True
        now = time.monotonic()
        if now < self._next_emit:
            self._schedule_flush()
        elif not self._emitting:  # else the emission in flight sends these values
            commit_now = self._save_and_publish_now
            if commit_now is None:
                await self._emit(now)
            else:  # one record: nothing can be reported while a plain commit runs
                record = self._next_record(now)
                try:
                    committed = commit_now(self._lease, record, self._view.encode(record))
                except BaseException as exc:
                    self._not_committed(record, exc)
                else:
                    if committed and not backend_outage.ongoing:  # ``_committed``'s common case, without a call
                        self._record = record
                    else:
                        self._committed(record, committed)
        # ``report`` may not suspend at all (its sends are made on this stack), so it yields
        # to the event loop itself when the handler has kept it busy for a millisecond
        # without the loop going round: a handler looping on ``report``, or computing between
        # reports without awaiting anything, still lets the others run and sees its
        # cancellation. One that awaits something else between reports pays no task switch.
        turns = self._turns
        if turns is not None:
            turn = turns.turn
            if not turns.armed:
                turns.arm()
            if turn != self._turn:
                self._turn, self._burst_start = turn, now
            elif now - self._burst_start >= _YIELD_EVERY:
                self._burst_start = now
                await anyio.lowlevel.checkpoint()
        elif now >= self._next_yield:  # no turn count: at most once a millisecond of reporting
            self._next_yield = now + _YIELD_EVERY
            await anyio.lowlevel.checkpoint()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._spawn.start_soon(self._flush_when_due)

    async def _flush_when_due(self) -> None:
        # One task flushes for as long as the handler reports faster than the interval: at
        # each deadline it sends what was merged meanwhile (unless a report due then sent it
        # first), and it ends after an interval in which nothing was reported (a task started
        # and ended per interval cost more than the flush). It also ends when an emission in
        # flight will send the values (that one schedules a flush if they are not due yet),
        # and after a write that failed, as a single flush did.
        try:
            while True:
                deadline = self._next_emit
                await _sleep_until(deadline)
                if self._closed or self._emitting:
                    return
                if self._dirty:
                    if not await self._emit(time.monotonic()):
                        return
                elif self._next_emit == deadline:  # nothing sent, nothing new: the handler went quiet
                    return
        finally:
            self._flush_scheduled = False

    async def _emit(self, now: float) -> bool:
        """Send the latest values if they are due; False if a write failed."""
        # One emission at a time, in order; one that finds another in flight leaves its
        # values to it (``_dirty``), which sends them when they are due.
        if self._emitting:
            return True
        self._emitting = True
        try:
            record = self._due(now)
            while record is not None:
                try:
                    committed = await self._save_and_publish(self._lease, record, self._view.encode(record))
                except BaseException as exc:
                    self._not_committed(record, exc)
                    return False
                self._committed(record, committed)
                # Reported while this one was in flight: send that too, when it is due.
                record = self._due(time.monotonic()) if self._dirty else None
            return True
        finally:
            self._emitting = False
            if self._emitted is not None:
                self._emitted.set()

    def _due(self, now: float) -> TaskRecord | None:
        """The record to commit now with the latest values, or None: nothing new, closed, or
        not due yet (then a flush is scheduled)."""
        if not self._dirty or self._closed:
            return None
        if now < self._next_emit:
            self._schedule_flush()
            return None
        return self._next_record(now)

    def _next_record(self, now: float) -> TaskRecord:
        """The record with the latest values, to commit now (they are due): they count as sent."""
        self._dirty = False
        self._next_emit = now + self._interval
        # ``evolve`` spelled out: its ``**changes`` cost as much as the copy itself.
        last = self._record
        return replace(last, revision=last.revision + 1, progress=self._percent, message=self._message)

    def _committed(self, record: TaskRecord, committed: bool) -> None:
        """Note a commit's answer."""
        if backend_outage.ongoing:  # ``answered`` does nothing without an outage: no call then
            backend_outage.answered()
        if committed:
            self._record = record
        else:
            self._closed = True  # our lease was taken over: write nothing more
            self._on_lost(record)

    def _not_committed(self, record: TaskRecord, exc: BaseException) -> None:
        """A commit raised: note it (re-raising a cancellation), and keep the values to send."""
        # Unanswered is not unwritten: the write may have been stored and published (its
        # reply lost, or the owner's cancel reaching this caller first). Its revision is
        # spent, so that the next write, the terminal state's too, has a newer one: a
        # backend drops an event whose revision it already published.
        self._record = record
        if isinstance(exc, BackendUnavailable):  # logged once per outage, not per report
            backend_outage.failed("a progress report", exc)
        elif isinstance(exc, Exception):
            # Progress is best effort: the next report or the terminal state repairs it.
            logger.warning("progress of task %s could not be sent", record.id, exc_info=True)
        else:
            raise exc
        self._dirty = True

    async def close(self) -> TaskRecord:
        """Stop reporting; the latest record with the latest reported values."""
        self._closed = True
        while self._emitting:  # let the emission in flight land first
            self._emitted = anyio.Event()
            await self._emitted.wait()
        if self._dirty:
            return self._record.evolve(progress=self._percent, message=self._message)
        return self._record
