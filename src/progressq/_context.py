"""What a task handler gets: its task's data and a cheap, rate-limited ``report``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from progressq.contracts import TaskRecord

__all__ = ("TaskContext",)

logger = logging.getLogger("progressq.worker")

_MAX_MESSAGE_LENGTH = 1000


_BURST_GAP = 0.0002
"""Reports closer together than this (seconds) are a burst: the handler is looping on
``report`` without letting the event loop run in between."""
_YIELD_EVERY = 0.001
"""Seconds of a burst of reports between two of ``report``'s own checkpoints."""
_YIELD_AT_LEAST_EVERY = 32
"""Reports between two of ``report``'s own checkpoints, burst or not."""


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
        commit: Callable[[TaskRecord], Awaitable[bool]],
        interval: float,
        spawn: TaskGroup,
    ) -> None:
        self._record = record
        self._commit = commit
        self._interval = interval
        self._spawn = spawn
        self._percent = record.progress
        self._message = record.message
        self._dirty = False
        self._closed = False
        self._flush_scheduled = False
        self._next_emit = -math.inf
        # Rate limiting and yielding run on time.monotonic(): one cheap clock on every event
        # loop (anyio.current_time() asks which loop runs on every call).
        self._last_report = -math.inf
        self._burst_start = -math.inf
        self._reports_since_yield = _YIELD_AT_LEAST_EVERY  # the first report yields
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
    def payload(self) -> dict[str, Any]:
        return self._record.payload

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self._record.attempt

    @property
    def progress(self) -> float:
        """The latest reported percent."""
        return self._percent

    async def report(self, percent: float, message: str | None = None) -> None:
        """Report progress (0 to 100) and optionally a short message.

        Raises:
            ValueError: ``percent`` is not a number from 0 to 100.
        """
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ValueError(f"percent must be a number from 0 to 100, got {percent!r}")
        if self._closed:
            return
        if percent > self._percent:
            self._percent = float(percent)
        if message is not None:
            self._message = str(message)[:_MAX_MESSAGE_LENGTH]
        self._dirty = True
        now = time.monotonic()
        if now >= self._next_emit:
            await self._emit(now)
        else:
            self._schedule_flush()
        # ``report`` may not suspend at all (sends are made on this stack), so it lets the
        # others run now and then: once a millisecond of a burst (a handler looping on
        # ``report``), and at least every 32nd report (a handler computing between reports
        # without awaiting anything). A handler that awaits something else between reports
        # pays almost no extra task switch.
        if now - self._last_report > _BURST_GAP:
            self._burst_start = now
        self._last_report = now
        self._reports_since_yield += 1
        if now - self._burst_start >= _YIELD_EVERY or self._reports_since_yield >= _YIELD_AT_LEAST_EVERY:
            self._burst_start = now
            self._reports_since_yield = 0
            await anyio.lowlevel.checkpoint()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._spawn.start_soon(self._flush_when_due)

    async def _flush_when_due(self) -> None:
        try:
            await _sleep_until(self._next_emit)
        finally:
            self._flush_scheduled = False
        await self._emit(time.monotonic())

    async def _emit(self, now: float) -> None:
        # One emission at a time, in order; one that finds another in flight leaves its
        # values to it (``_dirty``), which sends them when they are due.
        if self._emitting:
            return
        self._emitting = True
        try:
            while self._dirty and not self._closed:
                if now < self._next_emit:
                    self._schedule_flush()
                    return
                self._dirty = False
                self._next_emit = now + self._interval
                record = self._record.evolve(progress=self._percent, message=self._message)
                try:
                    committed = await self._commit(record)
                except Exception:
                    # Progress is best effort: the next report or the terminal state repairs it.
                    logger.warning("progress of task %s could not be sent", record.id, exc_info=True)
                    self._dirty = True
                    return
                if committed:
                    self._record = record
                else:
                    self._closed = True  # our lease was taken over: write nothing more
                if self._dirty:  # reported while this one was in flight
                    now = time.monotonic()
        finally:
            self._emitting = False
            if self._emitted is not None:
                self._emitted.set()

    async def close(self) -> TaskRecord:
        """Stop reporting; the latest record with the latest reported values."""
        self._closed = True
        while self._emitting:  # let the emission in flight land first
            self._emitted = anyio.Event()
            await self._emitted.wait()
        if self._dirty:
            return self._record.evolve(progress=self._percent, message=self._message)
        return self._record
