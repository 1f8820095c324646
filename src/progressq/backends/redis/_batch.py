"""Calls of one shard made at the same moment go to Redis together: one script call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from redis import exceptions as redis_errors

_Item = TypeVar("_Item")


class _Batcher(Generic[_Item]):
    """Collects the calls of one shard (rows, see ``_calls``) and sends them in batches, each
    one script call (``send``: the items' answers, in order; an answer that is an exception is
    that item's error). Each item runs atomically on its own; the items of one batch run in the
    order made, those of two batches out at once in either order, as concurrent calls would.
    Every shard has its own batcher, so a shard whose master hangs holds up only its own calls.

    Group commit: at most ``in_flight`` batches are on their way at once. A call made while
    that many are out waits for one of them to return and then goes with every call made
    meanwhile, in one batch. At a low rate every call leaves on the next turn of the event
    loop, as alone as it came; under load, batches grow by themselves, so the per-call cost (a
    round trip, a connection checkout, a pair of socket calls, the script's start and the
    values every call of the shard shares) is paid once per batch and the rate Redis sustains
    rises instead of the latency. A caller waits for its own answer; an error reaches only the
    calls it concerns (a lost connection concerns all of the batch, as it would have concerned
    each of them alone).
    """

    def __init__(
        self, send: Callable[[Sequence[_Item]], Awaitable[Any]], *, in_flight: int = 2, max_batch: int = 512
    ) -> None:
        self._send = send
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._pending: list[tuple[_Item, asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._scheduled: asyncio.Task[None] | None = None  # a flush that has not taken its batch yet

    async def call(self, item: _Item) -> Any:
        """Send ``item`` with the calls made meanwhile; its answer (its error raised)."""
        return await self.submit(item)

    def submit(self, item: _Item) -> asyncio.Future[Any]:
        """``call`` without a coroutine of its own (for a call per event): the future of
        ``item``'s answer."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._schedule()
        return future

    async def drain(self) -> None:
        """Wait for the batches on their way (before the client closes). Cancelling the
        wait leaves them going (``asyncio.wait``, unlike ``gather``, does not cancel them)."""
        while self._flushes:
            await asyncio.wait(set(self._flushes))

    def _schedule(self) -> None:
        if self._scheduled is not None or not self._pending or len(self._flushes) >= self._in_flight:
            return  # one will take these calls: the scheduled flush, or the next when one returns
        flush = self._scheduled = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(flush)
        flush.add_done_callback(self._flushed)

    def _flushed(self, flush: asyncio.Task[None]) -> None:
        self._flushes.discard(flush)
        if self._scheduled is flush:  # cancelled before it took its batch: the calls still wait
            self._scheduled = None
        self._schedule()  # what arrived meanwhile leaves now, together

    async def _flush(self) -> None:
        self._scheduled = None
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._schedule()  # more than one batch waits: the next may go at once
        batch = [call for call in batch if not call[1].done()]  # cancelled meanwhile: not sent
        if not batch:
            return
        try:
            answers = await self._send([item for item, _ in batch])
            for (_, future), answer in zip(batch, answers, strict=True):
                _settle(future, answer)
        except BaseException as exc:
            for _, future in batch:
                _settle(future, exc)
            if not isinstance(exc, Exception):
                raise


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        if isinstance(outcome, asyncio.CancelledError):
            outcome = redis_errors.ConnectionError("the call was cancelled before Redis answered")
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
