"""One process's shared pub/sub connection, and what subscribes through it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from progressq._outage import backend_outage
from progressq.backends.redis._common import _REDIS_ERRORS, _unavailable
from progressq.errors import BackendUnavailable

logger = logging.getLogger("progressq.redis")


class _Subscription:
    """What the shared pub/sub connection calls for one channel."""

    async def confirmed(self) -> None:
        """The subscription is live (first time, or again after a reconnect)."""

    async def message(self, data: bytes) -> None:
        """One message arrived on the channel."""


class _PubSub:
    """One pub/sub connection per backend, shared by every channel this process listens to.

    A lost connection is replaced and every channel subscribed again; each subscription's
    ``confirmed`` runs again so that it can fill what it missed.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub = client.pubsub()
        self._subs: dict[bytes, _Subscription] = {}
        self._wake = anyio.Event()
        # redis-py's PubSub opens its connection on the first command: two concurrent first
        # subscribes would each open one and lose a confirmation. One command at a time.
        self._lock = anyio.Lock()
        self.connections = 0  # how many times a lost connection was replaced
        self.broken = False  # lost, and not connected again yet

    async def subscribe(self, channel: str, sub: _Subscription) -> None:
        name = channel.encode()
        self._subs[name] = sub
        try:
            with _unavailable("subscribe"):
                async with self._lock:
                    await self._pubsub.subscribe(name)
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
                await self._pubsub.unsubscribe(name)

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
            if not self._subs or self._pubsub.connection is None:
                self._wake = anyio.Event()
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    await self._dispatch(message)
                backoff = 0.05
            except (*_REDIS_ERRORS, BackendUnavailable) as exc:
                backend_outage.failed("the pub/sub connection", exc)  # logged once per outage
                self.broken = True
            except Exception:
                logger.exception("pub/sub: a message could not be handled")

    async def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        sub = self._subs.get(channel) if isinstance(channel, bytes) else None
        if sub is None:
            return
        kind = message.get("type")
        if kind == "subscribe":
            await sub.confirmed()
        elif kind == "message":
            data = message.get("data")
            if isinstance(data, bytes):
                await sub.message(data)

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
        old, self._pubsub = self._pubsub, self._client.pubsub()
        self.connections += 1
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), suppress(Exception):  # broken already
            await _aclose(old)
        channels = list(self._subs)
        if not channels:
            return True
        try:
            await self._pubsub.subscribe(*channels)
        except _REDIS_ERRORS as exc:
            logger.debug("pub/sub: Redis is not back yet (%s)", exc)
            return False
        logger.info("pub/sub: connected again, %d channels subscribed", len(channels))
        return True

    async def aclose(self) -> None:
        self._subs.clear()
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0), suppress(Exception):  # closing anyway
            await _aclose(self._pubsub)


async def _aclose(pubsub: PubSub) -> None:
    # Typed only from redis-py 8.2 on: called through a typed name, so that mypy passes with
    # the lowest redis-py the extra allows and with the newest.
    close: Callable[[], Awaitable[None]] = pubsub.aclose
    await close()


# --- queue ----------------------------------------------------------------------------
