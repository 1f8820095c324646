"""One pub/sub connection, shared by every channel a process listens to on it, and what
subscribes through it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from progressq._outage import backend_outage
from progressq.backends.redis._common import _REDIS_ERRORS, _unavailable
from progressq.errors import BackendUnavailable

logger = logging.getLogger("progressq.redis")

# what opening or subscribing a new connection meets while Redis (Cluster) is not back yet
_NOT_BACK: tuple[type[BaseException], ...] = (*_REDIS_ERRORS, redis_errors.RedisClusterException)


class _Subscription:
    """What the shared pub/sub connection calls for one channel."""

    async def confirmed(self) -> None:
        """The subscription is live (first time, or again after a reconnect)."""

    async def message(self, data: bytes) -> None:
        """One message arrived on the channel."""


class _Source:
    """Where a pub/sub connection goes and how it subscribes: here, to a single Redis with
    ``SUBSCRIBE``. (Redis Cluster's sharded channels: ``_cluster._SlotSource``.)"""

    sharded = False
    subscribed_kind = "subscribe"
    message_kind = "message"
    unsubscribed_kind = "unsubscribe"
    ping_every: float | None = None  # None: redis-py's health check watches the connection

    def __init__(self, client: Redis | None = None) -> None:
        self._client = client

    async def open(self) -> PubSub:
        assert self._client is not None
        return self._client.pubsub()

    async def subscribe(self, pubsub: PubSub, channels: Sequence[bytes]) -> None:
        await pubsub.subscribe(*channels)

    async def unsubscribe(self, pubsub: PubSub, channels: Sequence[bytes]) -> None:
        await pubsub.unsubscribe(*channels)

    async def close(self, pubsub: PubSub) -> None:
        await _aclose(pubsub)


class _Lost(Exception):
    """The connection no longer carries a channel it should (a sharded channel's slot moved)."""


class _PubSub:
    """One pub/sub connection, shared by every channel this process listens to through it.

    A lost connection is replaced and every channel subscribed again; each subscription's
    ``confirmed`` runs again so that it can fill what it missed.
    """

    def __init__(self, source: _Source) -> None:
        self._source = source
        self._pubsub: PubSub | None = None  # opened by the first subscribe
        self._subs: dict[bytes, _Subscription] = {}
        self._unsubscribing: dict[bytes, int] = {}  # our unsubscribes not answered yet, per channel
        self._wake = anyio.Event()
        # redis-py's PubSub opens its connection on the first command: two concurrent first
        # subscribes would each open one and lose a confirmation. One command at a time.
        self._lock = anyio.Lock()
        self._heard = 0.0  # when the connection last carried anything (for ``ping_every``)
        self._pinged = False
        self.connections = 0  # how many times a lost connection was replaced
        self.broken = False  # lost, and not connected again yet

    async def subscribe(self, channel: str, sub: _Subscription) -> None:
        name = channel.encode()
        self._subs[name] = sub
        try:
            with _unavailable("subscribe"):
                async with self._lock:
                    if self._pubsub is None:
                        self._pubsub = await self._source.open()
                        self._heard = anyio.current_time()
                    await self._source.subscribe(self._pubsub, [name])
        except BaseException:
            if self._subs.get(name) is sub:
                del self._subs[name]
            raise
        self._wake.set()

    async def unsubscribe(self, channel: str) -> None:
        name = channel.encode()
        self._subs.pop(name, None)
        # On failure, a new connection subscribes only to what is still wanted.
        with suppress(*_REDIS_ERRORS):
            async with self._lock:
                if self._pubsub is not None:
                    self._unsubscribing[name] = self._unsubscribing.get(name, 0) + 1
                    await self._source.unsubscribe(self._pubsub, [name])

    async def run(self) -> None:
        backoff = 0.05
        while True:
            if self.broken:
                self._wake = anyio.Event()
                with anyio.move_on_after(backoff):
                    await self._wake.wait()  # or until a health check made the connection again
                backoff = min(backoff * 2, 2.0)
                await self._reconnect()
                continue
            pubsub = self._pubsub
            if not self._subs or pubsub is None or pubsub.connection is None:
                self._wake = anyio.Event()
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                continue
            try:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._heard = anyio.current_time()
                    self._pinged = False
                    await self._dispatch(message)
                else:
                    await self._check_alive(pubsub)
                backoff = 0.05
            except (*_REDIS_ERRORS, BackendUnavailable, _Lost) as exc:
                backend_outage.failed("the pub/sub connection", exc)  # logged once per outage
                self.broken = True
            except redis_errors.ResponseError as exc:
                if not self._source.sharded:
                    logger.exception("pub/sub: a message could not be handled")
                    continue
                # a sharded subscribe sent to a node that no longer serves the slot (MOVED)
                backend_outage.failed("the pub/sub connection", exc)
                self.broken = True
            except Exception:
                logger.exception("pub/sub: a message could not be handled")

    async def _check_alive(self, pubsub: PubSub) -> None:
        """Where redis-py's health check does not watch the connection, a ``PING`` after
        ``ping_every`` seconds of silence; no answer within as long again: lost."""
        every = self._source.ping_every
        if every is None:
            return
        silent = anyio.current_time() - self._heard
        if silent > 2 * every and self._pinged:
            raise _Lost(f"no answer to a ping within {every:g} s")
        if silent > every and not self._pinged:
            self._pinged = True
            async with self._lock:
                await pubsub.execute_command("PING")

    async def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        kind = message.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == self._source.unsubscribed_kind and self._unsubscribing.get(channel):
            self._unsubscribing[channel] -= 1  # the answer to our own unsubscribe
            if not self._unsubscribing[channel]:
                del self._unsubscribing[channel]
            return
        sub = self._subs.get(channel)
        if sub is None:
            return
        if kind == self._source.subscribed_kind:
            await sub.confirmed()
        elif kind == self._source.message_kind:
            data = message.get("data")
            if isinstance(data, bytes):
                await sub.message(data)
        elif kind == self._source.unsubscribed_kind and self._source.sharded:
            # Redis unsubscribes a sharded channel whose slot moved to another node
            raise _Lost(f"Redis unsubscribed {channel!r}: its slot moved")

    async def reconnect_now(self) -> bool:
        """Whether the connection is up: a lost one is made again now if Redis is back, not
        after the backoff (a health check that says Redis is back must mean that a client
        attaching now is not refused)."""
        if self.broken:
            await self._reconnect()
            if not self.broken:
                self._wake.set()  # the run loop reads at once instead of ending its backoff
        return not self.broken

    async def _reconnect(self) -> None:
        """A new connection subscribed to every wanted channel, unless one was made meanwhile;
        still ``broken`` if Redis is not back yet."""
        async with self._lock:
            if self.broken:
                self.broken = not await self._reconnect_locked()

    async def _reconnect_locked(self) -> bool:
        old, self._pubsub = self._pubsub, None
        self._unsubscribing.clear()  # their answers went with the old connection
        self.connections += 1
        if old is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), suppress(Exception):  # broken already
                await self._source.close(old)
        channels = list(self._subs)
        if not channels:
            return True
        try:
            pubsub = await self._source.open()
            try:
                await self._source.subscribe(pubsub, channels)
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), suppress(Exception):
                    await self._source.close(pubsub)
                raise
        except _NOT_BACK as exc:
            logger.debug("pub/sub: Redis is not back yet (%s)", exc)
            return False
        self._pubsub = pubsub
        self._heard = anyio.current_time()
        self._pinged = False
        logger.info("pub/sub: connected again, %d channels subscribed", len(channels))
        return True

    async def aclose(self) -> None:
        self._subs.clear()
        self._unsubscribing.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0), suppress(Exception):  # closing anyway
                await self._source.close(pubsub)


async def _aclose(pubsub: PubSub) -> None:
    # Typed only from redis-py 8.2 on: called through a typed name, so that mypy passes with
    # the lowest redis-py the extra allows and with the newest.
    close: Callable[[], Awaitable[None]] = pubsub.aclose
    await close()
