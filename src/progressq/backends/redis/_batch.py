"""Script calls made at the same moment go to Redis together: one pipelined round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript

from progressq.backends.redis._calls import queue_script
from progressq.backends.redis._common import _Client

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class _Batcher:
    """Collects script calls and sends them in pipelines (not transactions: each script is
    atomic on its own; the calls of one pipeline run in the order made, those of two
    pipelines out at once in either order, as concurrent calls would).

    Group commit: at most ``in_flight`` pipelines are on their way at once. A call made while
    that many are out waits for one of them to return and then goes with every call made
    meanwhile, in one pipeline. At a low rate every call leaves on the next turn of the event
    loop, as alone as it came; under load, batches grow by themselves, so the client's
    per-call cost (a round trip, a connection checkout, a pair of socket calls) is paid once
    per batch and the rate Redis sustains rises instead of the latency. A caller waits for
    its own answer; an error reaches only the calls it concerns (a lost connection concerns
    all of the batch, as it would have concerned each of them alone).
    """

    def __init__(self, client: _Client, *, in_flight: int = 2, max_batch: int = 512) -> None:
        self._client = client
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._scheduled: asyncio.Task[None] | None = None  # a flush that has not taken its batch yet

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        self._schedule()
        return await future

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
        batch = [call for call in batch if not call[3].done()]  # cancelled meanwhile: not sent
        if not batch:
            return
        if len(batch) == 1:
            script, keys, args, future = batch[0]
            try:
                answer = await script(keys=keys, args=args)
            except BaseException as exc:
                _settle(future, exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                _settle(future, answer)
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in batch:
                    queue_script(pipe, script, keys, args)
                answers = await pipe.execute(raise_on_error=False)
            for (script, keys, args, future), answer in zip(batch, answers, strict=True):
                if isinstance(answer, redis_errors.NoScriptError):
                    # Redis lost its scripts (a restart): this one did not run; load it, run it
                    answer = await script(keys=keys, args=args)
                _settle(future, answer)
        except BaseException as exc:
            for *_, future in batch:
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
