"""One pub/sub connection, shared by every channel a process listens to on it, and what
subscribes through it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from progressq._outage import backend_outage
from progressq.backends.redis._common import _REDIS_ERRORS, _unavailable
from progressq.backends.redis._wire import _Wire
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

    def received(self, data: bytes) -> Awaitable[None] | None:
        """One message arrived: handled at once (None), or what is left to await. A
        subscription whose messages usually need no waiting answers here without making a
        coroutine per message; the default awaits ``message``."""
        return self.message(data)


class _Source:
    """Where a pub/sub connection goes and how it subscribes: here, to a single Redis with
    ``SUBSCRIBE``. (Redis Cluster's sharded channels: ``_cluster._SlotSource``.)"""

    sharded = False
    subscribe_command = b"SUBSCRIBE"
    unsubscribe_command = b"UNSUBSCRIBE"
    subscribed_kind = b"subscribe"
    message_kind = b"message"
    unsubscribed_kind = b"unsubscribe"
    # A connection silent this long is sent a PING; still silent as long again, it is lost
    # (a peer gone without a word: no TCP reset ever comes).
    ping_every = 5.0

    def __init__(self, client: Redis | None = None) -> None:
        self._client = client

    async def open(self) -> _Wire:
        assert self._client is not None
        pool = self._client.connection_pool
        return await _Wire.open(pool.connection_class, pool.connection_kwargs)


class _Lost(Exception):
    """The connection no longer carries a channel it should (a sharded channel's slot moved)."""


# what ends a connection's reading: it is made again, and its subscriptions fill what they missed
_ENDS_READING: tuple[type[BaseException], ...] = (*_REDIS_ERRORS, BackendUnavailable, _Lost)


class _PubSub:
    """One pub/sub connection, shared by every channel this process listens to through it.

    A lost connection is replaced and every channel subscribed again; each subscription's
    ``confirmed`` runs again so that it can fill what it missed.
    """

    def __init__(self, source: _Source) -> None:
        self._source = source
        self._wire: _Wire | None = None  # opened by the first subscribe
        self._subs: dict[bytes, _Subscription] = {}
        self._unsubscribing: dict[bytes, int] = {}  # our unsubscribes not answered yet, per channel
        self._wake = anyio.Event()
        # Two concurrent first subscribes would each open a connection: one command at a time.
        self._lock = anyio.Lock()
        self.connections = 0  # how many times a lost connection was replaced
        self.broken = False  # lost, and not connected again yet

    async def subscribe(self, channel: str, sub: _Subscription) -> None:
        name = channel.encode()
        self._subs[name] = sub
        try:
            with _unavailable("subscribe"):
                async with self._lock:
                    if self._wire is None:
                        self._wire = await self._source.open()
                    await self._wire.send(self._source.subscribe_command, name)
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
                if self._wire is not None:
                    self._unsubscribing[name] = self._unsubscribing.get(name, 0) + 1
                    await self._wire.send(self._source.unsubscribe_command, name)

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch)
            await self._read()

    async def _read(self) -> None:
        backoff = 0.05
        while True:
            if self.broken:
                self._wake = anyio.Event()
                with anyio.move_on_after(backoff):
                    await self._wake.wait()  # or until a health check made the connection again
                backoff = min(backoff * 2, 2.0)
                await self._reconnect()
                continue
            wire = self._wire
            if wire is None:
                self._wake = anyio.Event()
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                continue
            try:
                await self._dispatch(await wire.replies())
                backoff = 0.05
            except _ENDS_READING as exc:
                backend_outage.failed("the pub/sub connection", exc)  # logged once per outage
                self.broken = True

    async def _dispatch(self, replies: list[Any]) -> None:
        """Hand each reply to its channel's subscription: a message at once, without a look at
        anything else; confirmations, Redis's own unsubscribes and errors in ``_control``."""
        message_kind = self._source.message_kind
        subs = self._subs
        for reply in replies:
            try:
                if type(reply) is list and reply[0] == message_kind:
                    sub = subs.get(reply[1])  # None: unsubscribed meanwhile (or not ours)
                    if sub is not None:
                        pending = sub.received(reply[2])
                        if pending is not None:
                            await pending
                else:
                    await self._control(reply)
            except _ENDS_READING:
                raise
            except Exception:
                logger.exception("pub/sub: a message could not be handled")

    async def _control(self, reply: Any) -> None:
        source = self._source
        if isinstance(reply, redis_errors.ResponseError):
            if source.sharded:  # a sharded subscribe sent to a node that no longer serves the slot (MOVED)
                raise _Lost(f"Redis refused a sharded subscription: {reply}")
            logger.error("pub/sub: Redis refused a command: %s", reply)
            return
        if type(reply) is not list or len(reply) < 2:
            return  # the answer to a PING while nothing is subscribed
        kind, channel = reply[0], reply[1]
        if kind == source.unsubscribed_kind and self._unsubscribing.get(channel):
            self._unsubscribing[channel] -= 1  # the answer to our own unsubscribe
            if not self._unsubscribing[channel]:
                del self._unsubscribing[channel]
            return
        sub = self._subs.get(channel)
        if sub is None:
            return  # a PING's answer ("pong"), or a channel no longer wanted
        if kind == source.subscribed_kind:
            await sub.confirmed()
        elif kind == source.unsubscribed_kind and source.sharded:
            # Redis unsubscribes a sharded channel whose slot moved to another node
            raise _Lost(f"Redis unsubscribed {channel!r}: its slot moved")

    async def _watch(self) -> None:
        """A ``PING`` on a connection silent for ``ping_every`` seconds; still silent when
        the next check comes: the connection is dropped, and the reader makes it again. Reads
        are counted rather than timed, so that a message costs no timeout."""
        every = self._source.ping_every
        watched: _Wire | None = None
        reads = -1
        pinged = False
        while True:
            await anyio.sleep(every)
            wire = self._wire
            if wire is None or self.broken:
                continue
            if wire is not watched or wire.reads != reads:
                watched, reads, pinged = wire, wire.reads, False
            elif not pinged:
                pinged = True
                with suppress(*_REDIS_ERRORS):  # a lost connection is the reader's to tell
                    async with self._lock:
                        await wire.send(b"PING")
            else:
                wire.abort(f"no answer to a ping within {every:g} s")

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
        old, self._wire = self._wire, None
        self._unsubscribing.clear()  # their answers went with the old connection
        self.connections += 1
        if old is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), suppress(Exception):  # broken already
                await old.close()
        channels = list(self._subs)
        if not channels:
            return True
        try:
            wire = await self._source.open()
            try:
                await wire.send(self._source.subscribe_command, *channels)
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), suppress(Exception):
                    await wire.close()
                raise
        except _NOT_BACK as exc:
            logger.debug("pub/sub: Redis is not back yet (%s)", exc)
            return False
        except Exception as exc:
            # An error the client library did not map (its cluster client mid-failover, say):
            # tried again after the backoff like an outage, never the end of listening.
            backend_outage.failed("the pub/sub connection", exc)
            return False
        self._wire = wire
        logger.info("pub/sub: connected again, %d channels subscribed", len(channels))
        return True

    async def aclose(self) -> None:
        self._subs.clear()
        self._unsubscribing.clear()
        wire, self._wire = self._wire, None
        if wire is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0), suppress(Exception):  # closing anyway
                await wire.close()
