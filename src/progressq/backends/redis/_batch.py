"""Calls of one shard made at the same moment go to Redis together: one script call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis import exceptions as redis_errors

from progressq.backends._group_commit import GroupCommit, settle

_Item = TypeVar("_Item")


def _cancelled() -> Exception:
    return redis_errors.ConnectionError("the call was cancelled before Redis answered")


class _Batcher(GroupCommit[_Item]):
    """Collects the calls of one shard (rows, see ``_calls``) and sends them in batches, each
    one script call (``send``: the items' answers, in order; an answer that is an exception is
    that item's error). Each item runs atomically on its own; the items of one batch run in the
    order made, those of two batches out at once in either order, as concurrent calls would.
    Every shard has its own batcher, so a shard whose master hangs holds up only its own calls.

    Group commit (``progressq.backends._group_commit``): under load the per-call cost (a round
    trip, a connection checkout, a pair of socket calls, the script's start and the values every
    call of the shard shares) is paid once per batch. A caller waits for its own answer; an
    error reaches only the calls it concerns (a lost connection concerns all of the batch, as it
    would have concerned each of them alone).
    """

    def __init__(
        self, send: Callable[[Sequence[_Item]], Awaitable[Any]], *, in_flight: int = 2, max_batch: int = 512
    ) -> None:
        super().__init__(in_flight=in_flight, max_batch=max_batch)
        self._send = send

    async def call(self, item: _Item) -> Any:
        """Send ``item`` with the calls made meanwhile; its answer (its error raised)."""
        return await self.submit(item)

    async def _run(self, batch: list[tuple[_Item, asyncio.Future[Any]]]) -> None:
        try:
            answers = await self._send([item for item, _ in batch])
            for (_, future), answer in zip(batch, answers, strict=True):
                # ``settle``'s common case spelled out (a row's answer, its caller still waiting):
                # a call fewer for each row
                if isinstance(answer, BaseException) or future.done():
                    settle(future, answer, _cancelled)
                else:
                    future.set_result(answer)
        except BaseException as exc:
            for _, future in batch:
                settle(future, exc, _cancelled)
            if not isinstance(exc, Exception):
                raise
