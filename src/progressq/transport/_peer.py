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
    "translate_gone",
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


def translate_gone(error: Exception, gone_errors: tuple[type[BaseException], ...]) -> Exception:
    """``error`` as a peer's ``send`` raises it: one of the framework's ``gone_errors``
    becomes ``PeerGone`` (caused by it); anything else stays as it is."""
    if isinstance(error, gone_errors) and not isinstance(error, PeerGone):
        gone = PeerGone()
        gone.__cause__ = error
        return gone
    return error


class Peer(Protocol):
    """The four things a connection needs of what carries it.

    A peer may also set ``sends_inline = True`` when its ``send`` normally finishes without
    suspending and never captures the current task (no ``asyncio.timeout()``, no anyio
    cancel scopes or locks): a raw ASGI ``send`` does. On asyncio the connection then sends
    on the publisher's stack and starts a writer task only for a send that has to wait
    (see ``_inline``).

    A peer over an ASGI WebSocket may also offer ``asgi_send``, the server's ``send``
    callable that its ``send`` wraps, and ``gone_errors``, the exceptions that callable
    raises when the client has gone: on the publisher's stack the connection then sends
    ``{"type": "websocket.send", "text": ...}`` through it itself and translates those
    errors into ``PeerGone``, one coroutine less on every message sent.
    """

    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes:
        """The next client frame. Raises ``PeerGone`` when the client has gone."""

    async def send(self, text: str) -> None:
        """Send one message. Raises ``PeerGone`` when the client has gone."""

    async def close(self, code: int, reason: str = "") -> None:
        """Close (or, before ``accept``, refuse) the connection."""
