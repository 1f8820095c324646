"""Group commit, the scheduling that the Redis and PostgreSQL backends share.

Writes made at the same moment leave together: at most ``in_flight`` batches are on their way
at once, and what is made while that many are out waits for one of them to return, then goes
with everything made meanwhile, as one batch. At a low rate each write leaves alone on the
next turn of the event loop; under load the batches grow by themselves, so the per-call cost
(a round trip, a connection checkout, a script's start, a commit) is paid once per batch and
the rate the server sustains rises instead of the latency. What a batch is, and how its
answers reach each write, is the backend's (:meth:`GroupCommit._run`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ("GroupCommit", "settle")

_Item = TypeVar("_Item")


class GroupCommit(Generic[_Item]):
    """Collects items and hands them to :meth:`_run` in batches (see the module)."""

    def __init__(self, *, in_flight: int = 2, max_batch: int = 512) -> None:
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._pending: list[tuple[_Item, asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._scheduled: asyncio.Task[None] | None = None  # a flush that has not taken its batch yet

    def submit(self, item: _Item) -> asyncio.Future[Any]:
        """Queue ``item`` for the next batch: the future of its answer (no coroutine of its
        own, for a write per event)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        # ``_schedule``'s first test, here: under load a flush is scheduled already for most
        # items, and the call itself cost more than the test
        if self._scheduled is None and len(self._flushes) < self._in_flight:
            self._schedule()
        return future

    async def drain(self) -> None:
        """Wait for the batches on their way (before the connections close). Cancelling the
        wait leaves them going (``asyncio.wait``, unlike ``gather``, does not cancel them)."""
        while self._flushes:
            await asyncio.wait(set(self._flushes))

    async def _run(self, batch: list[tuple[_Item, asyncio.Future[Any]]]) -> None:
        """Send one batch and settle every item's future (its answer or its error)."""
        raise NotImplementedError

    def _schedule(self) -> None:
        if self._scheduled is not None or not self._pending or len(self._flushes) >= self._in_flight:
            return  # one will take these items: the scheduled flush, or the next when one returns
        flush = self._scheduled = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(flush)
        flush.add_done_callback(self._flushed)

    def _flushed(self, flush: asyncio.Task[None]) -> None:
        self._flushes.discard(flush)
        if self._scheduled is flush:  # cancelled before it took its batch: the items still wait
            self._scheduled = None
        self._schedule()  # what arrived meanwhile leaves now, together

    async def _flush(self) -> None:
        self._scheduled = None
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._schedule()  # more than one batch waits: the next may go at once
        batch = [waiting for waiting in batch if not waiting[1].done()]  # given up on: not sent
        if batch:
            await self._run(batch)


def settle(future: asyncio.Future[Any], outcome: Any, cancelled: Callable[[], Exception]) -> None:
    """Give ``future`` its ``outcome`` (an exception is raised to its waiter), unless it was
    given up on; a batch cancelled before the server answered is ``cancelled()`` to its
    writes, an error of the backend's kind (its outcome is unknown, as after a lost connection)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        if isinstance(outcome, asyncio.CancelledError):
            outcome = cancelled()
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
