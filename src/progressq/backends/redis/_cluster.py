"""Redis Cluster: its client from a URL, and sharded pub/sub on the master of a slot.

A shard's channels all carry its hash tag: they are in one slot, served by one master, and a
message published there with ``SPUBLISH`` stays on that master and its replicas (a classic
``PUBLISH`` would cross the whole cluster). redis-py's asyncio cluster client has no pub/sub
at all in the lowest redis-py the ``redis`` extra allows (5.0.1); so each shard's pub/sub is
a plain connection to the master of its slot, found through the cluster client. When that
connection is lost (the master failed), when Redis unsubscribes the channels (their slot
moved) or when it refuses them (``MOVED``), the connection is made again to whichever master
serves the slot then, and every channel is subscribed again (``_pubsub`` then fills what was
missed from the history).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster

from progressq.backends.redis._pubsub import _Source
from progressq.backends.redis._wire import _Wire
from progressq.errors import ConfigurationError

__all__ = ("CLUSTER_SCHEMES", "_SlotSource", "cluster_client", "is_cluster_url")

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_client(url: str, **options: Any) -> RedisCluster:
    """A cluster client for ``redis+cluster://[user:password@]host:port[,host:port...]``
    (``rediss+cluster://`` for TLS): each listed node is a startup node, so that the client
    finds the cluster while one of them is down. ``options``: ``RedisCluster``'s arguments."""
    parts = urlsplit(url)
    scheme = parts.scheme.removesuffix("+cluster")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for written in hosts.split(","):
        host, colon, port = written.strip().rpartition(":")
        if not colon or not port.isdigit() or not host:
            raise ConfigurationError(f"a Redis Cluster URL lists host:port pairs, not {written!r}")
        nodes.append((host.strip("[]"), int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError("Redis Cluster has one database: no /DB in its URL")
    first = urlunsplit((scheme, f"{userinfo}{at}{hosts.split(',')[0].strip()}", "", parts.query, ""))
    others = [ClusterNode(host, port) for host, port in nodes[1:]]
    try:
        return RedisCluster.from_url(first, startup_nodes=others, **options)
    except ValueError as exc:
        raise ConfigurationError(f"not a Redis Cluster URL ({exc})") from exc


async def _ask_for_slot(client: RedisCluster, key: str) -> None:
    """Read ``key`` through the cluster client, which learns where its slot is served now.
    Mid-failover, the lowest redis-py allowed also fails with an ``AttributeError`` of its own
    (a connection that another call closed under it): that is the outage's, as a lost
    connection is, so that the pub/sub connection is made again after its backoff instead of
    ending the backend's listening."""
    try:
        await client.exists(key)
    except AttributeError as exc:
        raise ConnectionError(f"the cluster client failed mid-failover: {exc!r}") from exc


class _SlotSource(_Source):
    """Sharded pub/sub on the master that serves one slot (named by a key in it)."""

    sharded = True
    subscribe_command = b"SSUBSCRIBE"
    unsubscribe_command = b"SUNSUBSCRIBE"
    subscribed_kind = b"ssubscribe"
    message_kind = b"smessage"
    unsubscribed_kind = b"sunsubscribe"

    def __init__(self, client: RedisCluster, slot_key: str) -> None:
        super().__init__()
        self._cluster = client
        self._slot_key = slot_key

    async def open(self) -> _Wire:
        # A read of a key in the slot goes where the client thinks the slot is; after a
        # failover or a move that fails or is redirected, and the client learns the new map.
        await _ask_for_slot(self._cluster, self._slot_key)
        node = self._cluster.get_node_from_key(self._slot_key)
        if node is None:  # pragma: no cover - a master is asked for, and a covered slot has one
            raise ConfigurationError(f"no master serves the slot of {self._slot_key!r}")
        return await _Wire.open(node.connection_class, node.connection_kwargs)
