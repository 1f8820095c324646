"""Waiting for work on several shards, whose wake-up lists live in different slots.

A waiting worker cannot ``BLPOP`` lists of two slots at once on Redis Cluster. So a process
waits with one ``BLPOP`` per shard, all at once, each on its own connection (to the shard's
master), and wakes up with the first token. The other ``BLPOP`` calls are left to end by their
timeout: cancelling a blocking call midway costs redis-py its connection. A token one of them
takes after the wait has ended is kept, and the next wait returns at once (the worker then
looks in every shard anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import anyio

from progressq.backends.redis._common import _blpop, _Client

logger = logging.getLogger("progressq.redis")

__all__ = ("_ShardWaking",)


class _ShardWaking:
    """One process's wait for a wake-up token of any of the shards' lists."""

    def __init__(self, client: _Client, wake_keys: Sequence[str]) -> None:
        self._client = client
        self._keys = wake_keys
        self._pops: dict[int, asyncio.Task[None]] = {}  # the BLPOP in flight per shard
        self._woken = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Until a token is taken from any shard's list (one taken since the last wait
        counts), or ``seconds`` have passed."""
        if not self._woken.is_set():
            for shard, key in enumerate(self._keys):
                if shard not in self._pops:
                    self._pops[shard] = asyncio.get_running_loop().create_task(self._pop(shard, key, seconds))
            with anyio.move_on_after(seconds):
                await self._woken.wait()
        self._woken.clear()

    async def _pop(self, shard: int, key: str, seconds: float) -> None:
        try:
            if await _blpop(self._client, key, seconds):
                self._woken.set()
        except Exception as exc:  # an outage: the worker's next take meets it, and says so
            logger.debug("waiting for work on shard %d: %s", shard, exc)
        finally:
            self._pops.pop(shard, None)

    async def aclose(self) -> None:
        """Stop the calls in flight (their connections are dropped: the client closes next)."""
        pops = list(self._pops.values())
        for pop in pops:
            pop.cancel()
        for pop in pops:
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):  # cancelled, as asked
                await pop
