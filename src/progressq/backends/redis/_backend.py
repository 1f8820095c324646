"""The Redis backend bundle: a queue and a registry on one client and prefix (a single
Redis's client, or Redis Cluster's)."""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from progressq._outage import backend_outage
from progressq.backends.redis._calls import _Calls
from progressq.backends.redis._cluster import _SlotSource, cluster_client, is_cluster_url
from progressq.backends.redis._common import _Client, _redacted, _text, _unavailable
from progressq.backends.redis._health import ClusterHealth
from progressq.backends.redis._packing import pack_in_c
from progressq.backends.redis._pubsub import _PubSub, _Source
from progressq.backends.redis._queue import RedisTaskQueue
from progressq.backends.redis._registry import RedisClientRegistry
from progressq.backends.redis._shards import _Shards
from progressq.contracts import (
    Backend,
    BackendDefaults,
    ClientRegistry,
    Lease,
    TaskQueue,
    TaskRecord,
)
from progressq.errors import BackendUnavailable, ConfigurationError

logger = logging.getLogger("progressq.redis")

# On three masters, 8 shards average two to three each; which master serves which shard is
# the hash of its tag (of the prefix), so a prefix's shards may land 4/2/2 (the default
# prefix's do on the standard layout of evenly split slots).
_CLUSTER_SHARDS = 8


class RedisBackend(BackendDefaults):
    """Queue and registry on one Redis or one Redis Cluster, for many web and worker processes.

    Open it for the application's lifetime (the Hub does): ``async with backend: ...``.

    Args:
        client: a ``redis.asyncio.Redis``, or a ``redis.asyncio.cluster.RedisCluster``, made
            with ``decode_responses=False`` (the default).
        prefix: every key and channel starts with ``prefix:`` (with several shards,
            ``{prefix:N}:``); apps sharing a Redis use different prefixes.
        capacity: most tasks waiting at once (``enqueue`` raises ``QueueFull`` beyond it);
            ``None`` for no limit. With several shards it holds per shard (a shard's script
            cannot see the others' counts): the queue then holds up to ``capacity * shards``.
        retention: seconds a finished task's record stays readable and listed.
        history_size: events kept per identity for resuming (approximately: at least this many).
        history_ttl: seconds an identity's history and seq outlive its last event (at least;
            at most a minute more, or a tenth of it when that is shorter).
        lease_timeout: seconds without a heartbeat after which a running task is taken
            over by another worker. Heartbeats go every third of it.
        max_deliveries: deliveries of one task without an outcome (its workers died or
            stalled) before it is ``failed`` instead of run again.
        consumer: this process's name in the workers' group; host, pid and a random
            suffix when omitted.
        forget_consumers_after: seconds after which a worker's consumer that holds no task
            and did not read is removed from the group by the live workers (it died; a live
            one that was only idle is made again by its next read). A worker removes its
            own on a graceful exit.
        attach_timeout: seconds ``attach`` waits for Redis to confirm a subscription.
        close_client: close ``client`` when the backend closes (``from_url`` sets it).
        shards: slot groups the keys are spread over (see the Redis Cluster section of the
            backends page); every process of an application must use the same number, fixed
            for the life of its data. Default: 1 on a single Redis (the key names without
            hash tags), 8 on Redis Cluster.
    """

    def __init__(
        self,
        client: _Client,
        *,
        prefix: str = "progressq",
        capacity: int | None = None,
        retention: float = 86_400.0,
        history_size: int = 1000,
        history_ttl: float = 86_400.0,
        lease_timeout: float = 30.0,
        max_deliveries: int = 5,
        consumer: str | None = None,
        forget_consumers_after: float = 600.0,
        attach_timeout: float = 10.0,
        close_client: bool = False,
        shards: int | None = None,
    ) -> None:
        if client.get_encoder().decode_responses:
            raise ConfigurationError("the Redis backend needs a client made with decode_responses=False")
        if capacity is not None and capacity < 1:
            raise ConfigurationError("capacity must be >= 1 or None")
        if min(retention, history_ttl, lease_timeout, attach_timeout, forget_consumers_after) <= 0:
            raise ConfigurationError(
                "retention, history_ttl, lease_timeout, attach_timeout and forget_consumers_after must be > 0"
            )
        if history_size < 1 or max_deliveries < 1:
            raise ConfigurationError("history_size and max_deliveries must be >= 1")
        cluster = isinstance(client, RedisCluster)
        count = shards if shards is not None else (_CLUSTER_SHARDS if cluster else 1)
        self.client = client
        self.prefix = prefix
        self.cluster = cluster
        self._shards = _Shards(prefix, count, tagged=cluster or count > 1)
        self._close_client = close_client
        self._url: str | None = None
        # one place builds every script call, for the queue, the registry and this bundle
        calls = [
            _Calls(
                client,
                keys,
                capacity=capacity or 0,
                retention=max(1, math.ceil(retention)),
                history_size=history_size,
                history_ttl=max(1, math.ceil(history_ttl)),
                sharded_pubsub=cluster,
                stamps=count > 1,
            )
            for keys in self._shards.keys
        ]
        if isinstance(client, RedisCluster):  # each shard's channels on its slot's master
            pubsubs = [_PubSub(_SlotSource(client, keys.marker)) for keys in self._shards.keys]
        else:  # one connection for every channel
            pubsubs = [_PubSub(_Source(client))] * count
        self._pubsubs = list({id(pubsub): pubsub for pubsub in pubsubs}.values())
        self._health = ClusterHealth(client, self._shards.keys, pubsubs) if isinstance(client, RedisCluster) else None
        self._registry = RedisClientRegistry(client, calls, self._shards, pubsubs, attach_timeout=attach_timeout)
        self._queue = RedisTaskQueue(
            client,
            calls,
            self._shards,
            pubsubs,
            lease_timeout=lease_timeout,
            max_deliveries=max_deliveries,
            consumer=consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            forget_consumers_after=forget_consumers_after,
        )
        self._group: anyio.abc.TaskGroup | None = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "progressq", **options: Any) -> RedisBackend:
        """A backend with its own client for ``url`` (``redis://[:password@]host:port/db``,
        ``rediss://`` for TLS, ``unix://``; for Redis Cluster
        ``redis+cluster://[:password@]host:port,host:port,...``, ``rediss+cluster://`` for
        TLS), closed with the backend.

        ``options`` are the keyword arguments of :class:`RedisBackend` (``capacity``,
        ``lease_timeout``, ``shards``, ...).
        """
        client: _Client
        if is_cluster_url(url):
            # above the longest blocking read (1 s)
            client = cluster_client(url, decode_responses=False, socket_connect_timeout=5.0, socket_timeout=15.0)
        else:
            try:
                client = single = Redis.from_url(
                    url,
                    decode_responses=False,
                    socket_connect_timeout=5.0,
                    socket_timeout=15.0,  # above the longest blocking read (1 s)
                    health_check_interval=10,
                )
            except ValueError as exc:
                raise ConfigurationError(f"not a Redis URL: {_redacted(url)!r} ({exc})") from exc
            pack_in_c(single)
        backend = cls(client, prefix=prefix, close_client=True, **options)
        backend._url = url
        return backend

    @property
    def url(self) -> str:
        """Where this backend's Redis is, without a password."""
        if self._url is not None:
            return _redacted(self._url)
        if isinstance(self.client, RedisCluster):
            nodes = self.client.nodes_manager.startup_nodes.values()
            return "redis+cluster://" + ",".join(f"{node.host}:{node.port}" for node in nodes)
        kwargs = self.client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"

    def describe(self) -> str:
        """``RedisBackend``, the URL without its password, and the key prefix."""
        return f"{type(self).__name__} {self.url} prefix {self.prefix!r}"

    @property
    def queue(self) -> RedisTaskQueue:
        return self._queue

    @property
    def registry(self) -> RedisClientRegistry:
        return self._registry

    async def ping(self) -> bool:
        """True when Redis answers, on the pub/sub connection too (made again at once if it
        was lost); False (never an exception) when it does not.

        On Redis Cluster: True while any shard answers (its master, and its pub/sub
        connection), as this process can serve that shard's owners; the shards that do not
        answer are logged as degraded and listed in :attr:`degraded_shards`."""
        if self._health is not None:
            try:
                return await self._health.check()
            except Exception:
                return False
        try:
            with anyio.fail_after(2.0):
                answered = bool(await self.client.ping())
                for pubsub in self._pubsubs:
                    answered = answered and await pubsub.reconnect_now()
                return answered
        except Exception:
            return False

    @property
    def degraded_shards(self) -> frozenset[int]:
        """On Redis Cluster, the shards that did not answer the last :meth:`ping`; empty on a
        single Redis (where a failed ping is the whole backend's)."""
        return frozenset() if self._health is None else self._health.degraded

    async def __aenter__(self) -> RedisBackend:
        try:
            import asyncio

            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError("the Redis backend runs on asyncio only (redis-py's client needs it)") from None
        if self._group is not None:
            raise ConfigurationError("this backend is already open")
        try:
            await self._check_shards()
        except BaseException:
            if self._close_client:
                with anyio.CancelScope(shield=True):
                    await self.client.aclose()
            raise
        group = anyio.create_task_group()
        await group.__aenter__()
        for pubsub in self._pubsubs:
            group.start_soon(pubsub.run)
        group.start_soon(self._queue._heartbeat)
        self._group = group
        return self

    async def _check_shards(self) -> None:
        """Refuse to open on data kept with another number of shards: its owners would be
        looked for in the wrong shards, or (one shard without tags beside tagged shards) in
        keys that hold none of them. Every layout records its count under the untagged key
        ``prefix:shards``, which all layouts of a prefix share; a sharded one also under its
        first shard's (where earlier versions recorded it, so that their data is recognised
        too). (Not checked while Redis does not answer.)"""
        count = str(self._shards.count).encode()
        # checked in this order, so that a refused layout records nothing
        first_shard = f"{{{self.prefix}:0}}:shards"
        try:
            with _unavailable("shard count"):
                # a sharded layout of an earlier version recorded its count only there
                self._refuse_another(await self.client.get(first_shard))
                self._refuse_another(await self._record_count(f"{self.prefix}:shards", count))
                if self._shards.tagged:
                    self._refuse_another(await self._record_count(first_shard, count))
        except BackendUnavailable as exc:
            logger.warning("could not check the shard count against the stored one: %s", exc)

    def _refuse_another(self, stored: bytes | str | None) -> None:
        if stored is not None and _text(stored) != str(self._shards.count):
            raise ConfigurationError(
                f"this Redis holds data of {_text(stored)} shards under prefix {self.prefix!r}, "
                f"not {self._shards.count}: give every process the same shards"
            )

    async def _record_count(self, key: str, count: bytes) -> bytes | str | None:
        """Record ``count`` under ``key`` unless one is recorded; the one recorded."""
        await self.client.set(key, count, nx=True)
        return await self.client.get(key)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and heartbeating; close the client if the backend made it."""
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        await self._queue._drain_batches()
        if self._queue._waking is not None:
            await self._queue._waking.aclose()
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await self._queue.leave()
        for pubsub in self._pubsubs:
            await pubsub.aclose()
        backend_outage.reset()  # an outage of this backend ends with it, whatever its state
        if self._close_client:
            with anyio.CancelScope(shield=True):
                await self.client.aclose()

    def __repr__(self) -> str:
        shards = f", shards={self._shards.count}" if self._shards.tagged else ""
        return f"RedisBackend({self.url}, prefix={self.prefix!r}{shards})"

    async def enqueue_and_announce(self, record: TaskRecord, *, max_unfinished: int | None) -> int | None:
        """Check the owner's limit (a count the queue keeps), store and queue ``record`` and
        announce it (``taskQueued``), in one script: atomic, so that no worker can take the
        task, and publish its "running", before its owner was told it was queued, and two
        racing submits cannot both pass the limit.

        Raises:
            QueueFull: the queue is at capacity; nothing was queued.
        """
        shard = self._shards.of_owner(record.owner)
        row = self._queue._calls[shard].submit_row(record, max_unfinished)
        return await self._queue._enqueue_by(shard, row, record)

    def save_and_publish(
        self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> Coroutine[Any, Any, bool]:
        """Save ``record`` (fenced by the lease's attempt), publish it to its owner
        (``taskProgress``) and, with ``finish``, acknowledge the task: one script, one round
        trip. A fenced-out save publishes and acknowledges nothing. False: fenced out.

        The queue's coroutine itself, not one awaiting it: every report waits here for its
        batch, and each coroutine alive across that wait is one more object for the cycle
        collector to promote and later scan in a full pass (``_queue._commit``)."""
        return self._queue._commit(lease, record, view_json, finish=finish)


if TYPE_CHECKING:  # mypy proves that the Redis backend satisfies the contracts
    _backend: Backend = cast(RedisBackend, None)
    _queue: TaskQueue = cast(RedisTaskQueue, None)
    _registry: ClientRegistry = cast(RedisClientRegistry, None)
