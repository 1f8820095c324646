"""What carries a connection (a :class:`Peer`), and the close codes it may be closed with."""

from __future__ import annotations

from typing import Protocol

__all__ = (
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "Peer",
    "PeerGone",
)

CLOSE_GOING_AWAY = 1001
"""The server is shutting down."""
CLOSE_POLICY_VIOLATION = 1008
"""A forged or unknown client id, a refused origin, too many messages too fast, or too many
connections of one identity."""
CLOSE_TOO_BIG = 1009
"""A client frame over ``max_frame_bytes``."""
CLOSE_INTERNAL_ERROR = 1011
"""The server failed unexpectedly (logged on the server; the reason says nothing more)."""
CLOSE_SLOW_CONSUMER = 1013
"""The client did not keep up; reconnect and resume with ``lastSeq``."""
CLOSE_TRY_AGAIN_LATER = 1013
"""The backend is unavailable (after an ``error`` message ``backend_unavailable``);
reconnect later and resume."""


class PeerGone(Exception):
    """The client went away (closed, or the connection broke)."""


class Peer(Protocol):
    """The four things a connection needs of what carries it.

    A peer may also set ``sends_inline = True`` when its ``send`` normally finishes without
    suspending and never captures the current task (no ``asyncio.timeout()``, no anyio
    cancel scopes or locks): a raw ASGI ``send`` does. On asyncio the connection then sends
    on the publisher's stack and starts a writer task only for a send that has to wait
    (see ``_inline``).
    """

    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes:
        """The next client frame. Raises ``PeerGone`` when the client has gone."""

    async def send(self, text: str) -> None:
        """Send one message. Raises ``PeerGone`` when the client has gone."""

    async def close(self, code: int, reason: str = "") -> None:
        """Close (or, before ``accept``, refuse) the connection."""
