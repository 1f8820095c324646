"""A pub/sub connection read with hiredis directly.

redis-py's ``Connection`` opens it: TCP, TLS or a Unix socket, ``AUTH`` (password or user and
password), ``SELECT``, the client name, exactly as for the rest of the client. From then on
this module reads the connection's stream itself: whatever the socket holds is fed to one
``hiredis.Reader`` at once and every complete reply is taken out in one pass. redis-py's
``PubSub.get_message`` reads one message per call, each under a timeout of its own, and turns
each into a dict: on a busy web process that was most of the cost of an event's way from
Redis to its subscriber (``docs/benchmarks.md``, section 7).

The connection speaks RESP2 whatever the client's ``protocol``: a message is then the array
``[kind, channel, data]`` (RESP3 would send push frames, and the lowest redis-py the extra
allows reads pub/sub in RESP2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

__all__ = ("_Wire",)

# Read as much as the stream holds: one read, one feed, every complete reply taken out.
_READ_SIZE = 1 << 20


class _Wire:
    """One pub/sub connection: commands written through redis-py, replies read here."""

    __slots__ = ("_aborted", "_connection", "_gets", "_parser", "_stream", "reads")

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        # Redis's error replies come back as ResponseError instances (not raised); bytes that
        # are not RESP mean a broken connection, which is made again.
        self._parser = hiredis.Reader(protocolError=redis_errors.ConnectionError, replyError=redis_errors.ResponseError)
        self._gets = self._parser.gets
        self._stream: asyncio.StreamReader | None = None
        self._aborted = ""
        self.reads = 0  # successful reads so far: a watchdog compares it to tell silence

    @classmethod
    async def open(cls, connection_class: type[AbstractConnection], options: dict[str, Any]) -> _Wire:
        """Connect with ``connection_class(**options)``, as a pool of the client would, but
        without redis-py's health check (it would read a message as the answer to its PING:
        this connection is pinged by its reader instead) and in RESP2."""
        connection = connection_class(**{**options, "health_check_interval": 0, "protocol": 2})
        wire = cls(connection)
        connect: Callable[[], Awaitable[None]] = connection.connect  # typed only in later redis-py
        await connect()
        # redis-py keeps the stream it opened here, in each of its versions the extra allows
        stream = connection._reader
        if stream is None:  # pragma: no cover - connect() returns connected or raises
            raise redis_errors.ConnectionError("the pub/sub connection did not open")
        wire._stream = stream
        return wire

    async def send(self, *args: bytes | str) -> None:
        await self._connection.send_command(*args, check_health=False)

    async def replies(self) -> list[Any]:
        """Every complete reply that has arrived, at least one (waits for the socket).

        Raises ``ConnectionError`` when the connection is closed or was aborted."""
        stream = self._stream
        assert stream is not None
        gets = self._gets
        while True:
            data = await stream.read(_READ_SIZE)
            if not data:
                raise redis_errors.ConnectionError(self._aborted or "Redis closed the pub/sub connection")
            self.reads += 1
            self._parser.feed(data)
            reply = gets()
            if reply is False:
                continue  # only part of a reply so far
            replies = [reply]
            reply = gets()
            while reply is not False:
                replies.append(reply)
                reply = gets()
            return replies

    def abort(self, reason: str) -> None:
        """Drop the connection now: the read under way ends with ``ConnectionError(reason)``."""
        self._aborted = reason
        writer = self._connection._writer
        if writer is not None:
            writer.transport.abort()

    async def close(self) -> None:
        await self._connection.disconnect(nowait=True)
