"""What carries a connection (a :class:`Peer`), and the close codes it may be closed with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = (
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "Peer",
    "PeerDefaults",
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
    """What a connection needs of what carries it: four methods and three declarations.

    The declarations say how the connection may send on the publisher's stack; subclass
    :class:`PeerDefaults` to declare the defaults (send through a writer task, always
    through ``send``), and set a member to say more:

    ``sends_inline``: True when ``send`` normally finishes without suspending and never
    captures the current task (no ``asyncio.timeout()``, no anyio cancel scopes or locks): a
    raw ASGI ``send`` does. On asyncio the connection then sends on the publisher's stack and
    starts a writer task only for a send that has to wait (see ``_inline``).

    ``asgi_send``: for a peer over an ASGI WebSocket, the server's ``send`` callable that its
    ``send`` wraps; ``gone_errors``: the exceptions that callable raises when the client has
    gone. On the publisher's stack the connection then sends ``{"type": "websocket.send",
    "text": ...}`` through it itself and translates those errors into ``PeerGone``, one
    coroutine less on every message sent.
    """

    @property
    def sends_inline(self) -> bool:
        """``send`` may run on the publisher's stack (see above)."""

    @property
    def asgi_send(self) -> Callable[[dict[str, str]], Awaitable[None]] | None:
        """The ASGI ``send`` that ``send`` wraps, or None: messages go through ``send``."""

    @property
    def gone_errors(self) -> tuple[type[BaseException], ...]:
        """What ``asgi_send`` raises when the client has gone (read with ``asgi_send``)."""

    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes:
        """The next client frame. Raises ``PeerGone`` when the client has gone."""

    async def send(self, text: str) -> None:
        """Send one message. Raises ``PeerGone`` when the client has gone."""

    async def close(self, code: int, reason: str = "") -> None:
        """Close (or, before ``accept``, refuse) the connection."""


class PeerDefaults:
    """Subclass it in a :class:`Peer` to declare what the connection may not assume: every
    message goes through ``send``, from a writer task of the connection. Override a member
    (as a class attribute, or set on the instance) to say more."""

    sends_inline: bool = False
    """Not on the publisher's stack: a writer task awaits ``send``."""
    asgi_send: Callable[[dict[str, str]], Awaitable[None]] | None = None
    """No ASGI ``send`` to call directly: messages go through ``send``."""
    gone_errors: tuple[type[BaseException], ...] = ()
    """Nothing to translate: ``send`` raises ``PeerGone`` itself."""
