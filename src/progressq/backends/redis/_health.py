"""Health on Redis Cluster: a process is healthy while it can serve, degraded per shard.

A master that fails (or hangs) takes its shards away until its replica takes over; the other
shards' owners are served meanwhile, and restarting the process would not bring the shard
back sooner. So a process's health check fails only when no master answers; a shard whose
master or pub/sub connection does not answer is reported as degraded: a warning when it stops
answering, a note when it answers again, and :attr:`ClusterHealth.degraded` for metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from redis.asyncio.cluster import RedisCluster

from progressq.backends.redis._common import _Keys
from progressq.backends.redis._pubsub import _PubSub

logger = logging.getLogger("progressq.redis")

_DEADLINE = 1.5  # each master's answer, all asked at once: under the hub's 2 s for a health check


class ClusterHealth:
    """Which shards of one backend answer, asked master by master and connection by connection."""

    def __init__(self, client: RedisCluster, keys: Sequence[_Keys], pubsubs: Sequence[_PubSub]) -> None:
        self._client = client
        self._keys = keys
        self._pubsubs = pubsubs
        self.degraded: frozenset[int] = frozenset()
        """The shards that did not answer the last check (their master, or its pub/sub)."""

    async def check(self) -> bool:
        """Whether any shard answers; notes (and logs the change of) the degraded ones."""
        answered: set[int] = set()

        async def ask(shard: int) -> None:
            with anyio.move_on_after(_DEADLINE):
                try:
                    node = self._client.get_node_from_key(self._keys[shard].marker)
                    if node is None:
                        return
                    if not await self._client.ping(target_nodes=node):
                        return
                    if await self._pubsubs[shard].reconnect_now():
                        answered.add(shard)
                except Exception as exc:  # any failure is this shard's, not the check's
                    logger.debug("shard %d did not answer a health check: %s", shard, exc)

        async with anyio.create_task_group() as group:
            for shard in range(len(self._keys)):
                group.start_soon(ask, shard)
        degraded = frozenset(range(len(self._keys))) - answered
        if degraded - self.degraded:
            logger.warning(
                "Redis Cluster: shards %s do not answer (their master fails or fails over); the other shards go on",
                sorted(degraded - self.degraded),
            )
        if self.degraded - degraded:
            logger.info("Redis Cluster: shards %s answer again", sorted(self.degraded - degraded))
        self.degraded = degraded
        return bool(answered)
