"""Script calls made at the same moment go to Redis together: one pipelined round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class _Batcher:
    """Collects the script calls of one turn of the event loop and sends them in one pipeline
    (not a transaction: each script is atomic on its own, and they run in the order made).

    With many tasks committing at once (a worker's slots, a web process's submits) this saves
    a round trip, a connection checkout and a pair of socket calls per script call. A caller
    waits for its own answer; an error reaches only the calls it concerns (a lost connection
    concerns all of the batch, as it would have concerned each of them alone).
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pending: list[_Call] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if len(self._pending) == 1:  # the first of this turn sends them all, on the next turn
            flush = loop.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        return await future

    async def drain(self) -> None:
        """Wait for the batches on their way (before the client closes)."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
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
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
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
