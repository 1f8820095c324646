"""A connection that LISTENs: notifications to callbacks, reconnecting when it is lost."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import psycopg
from psycopg import sql

from progressq._outage import backend_outage
from progressq.backends.postgres._common import _UNAVAILABLE
from progressq.errors import BackendUnavailable

logger = logging.getLogger("progressq.postgres")

# A dead peer is noticed within about 20 s even when no packet says so.
_LOST: tuple[type[BaseException], ...] = (*_UNAVAILABLE, BackendUnavailable)
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 2}


class Listener:
    """One connection of its own LISTENing to ``channels`` (a pooled connection cannot: it
    would miss notifications between uses). ``on_notify(channel, payload)`` is awaited for each,
    in the order PostgreSQL sends them (commit order); ``on_connect`` after every (re)connect,
    once listening, so that what was missed meanwhile can be read from the tables.

    ``run`` waits for :meth:`need` before it connects: a process that never needs it (a worker
    does not need every identity's events) opens no connection.
    """

    def __init__(
        self,
        conninfo: str,
        channels: tuple[str, ...],
        on_notify: Callable[[str, str], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]],
        *,
        needed: bool = True,
    ) -> None:
        self._conninfo = psycopg.conninfo.make_conninfo(conninfo, **_KEEPALIVES)
        self._channels = channels
        self._on_notify = on_notify
        self._on_connect = on_connect
        # Events are made in ``run``: a backend may be made outside any event loop.
        self._need_it = needed
        self._needed: anyio.Event | None = None
        self.listening = False  # LISTENing now
        self.broken = False  # the connection was lost and is not back yet
        self.connections = 0  # how many times it connected

    def need(self) -> None:
        self._need_it = True
        if self._needed is not None:
            self._needed.set()

    async def run(self) -> None:
        if not self._need_it:
            self._needed = anyio.Event()
            await self._needed.wait()
        backoff = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except _UNAVAILABLE as exc:
                self.broken = True
                backend_outage.failed("listening for notifications", exc)  # logged once per outage
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                for channel in self._channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self.connections += 1
                self.broken = False
                backoff = 0.1
                self.listening = True
                backend_outage.answered()
                await self._on_connect()
                async for notify in conn.notifies():
                    await self._on_notify(notify.channel, notify.payload)
            except _LOST as exc:
                self.broken = True
                backend_outage.failed("listening for notifications", exc)
            finally:
                self.listening = False
                with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                    await conn.close()
            await anyio.sleep(backoff)
