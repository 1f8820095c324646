"""Transport settings and the framework-free view of a request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ("Identify", "RequestInfo", "TransportSettings")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the transport needs of an HTTP request or WebSocket handshake.

    Attributes:
        headers: the request headers; lookups use lower-case names.
        client: the peer's address, when known.
        raw: the framework's own request or websocket object, for ``identify`` hooks that
            read a session or a logged-in user.
    """

    headers: Mapping[str, str]
    client: str | None = None
    raw: Any = None


Identify = Callable[[RequestInfo], Awaitable[str | None]]
"""An app's hook that names the caller's identity (its logged-in user, its session), or None.

An id the hook returns is trusted as presented: a client presenting it is accepted, and a
client presenting nothing gets it as its identity instead of a freshly minted one.
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportSettings:
    """Limits and hooks shared by every adapter.

    Attributes:
        identify: see :data:`Identify`.
        allowed_origins: origins (``https://app.example``) allowed to open a WebSocket or
            event stream, or to start and cancel tasks, besides the server's own origin;
            ``"*"`` allows any (and logs a warning at startup). A request without ``Origin``
            (not a browser) is allowed.
        public_origins: the origins the app's own pages are served from
            (``https://app.example``). When set, they are the server's own origin and the
            ``Host`` header is not consulted; when empty, a request whose ``Origin`` matches
            its own ``Host`` is same-origin, which a DNS-rebinding page can arrange. Set it in
            production.
        snapshot_size: most tasks a snapshot carries, the newest; a snapshot of an
            identity with more says ``complete: false`` (the client lists the rest with
            ``GET /api/tasks`` if it needs them). Bounds what a ``resume`` costs.
        max_body_bytes: largest HTTP request body (413 beyond).
        max_frame_bytes: largest WebSocket frame from a client (close 1009 beyond).
        messages_per_second: sustained client messages allowed per connection.
        message_burst: client messages allowed at once before the rate applies (close 1008
            beyond).
        max_connections_per_identity: open WebSockets and event streams one identity may
            have in this process (close 1008, or 429 for an event stream, beyond).
        outbox_size: messages queued for one connection before it counts as too slow
            (close 1013; the client resumes from history).
        send_timeout: seconds one send may take before the connection is dropped.
        send_inline: on asyncio, send a WebSocket message on the publisher's stack when the
            server can take it at once, and start a writer task only for a send that must
            wait (a slow client still never holds anyone up). Turn off if an ASGI middleware
            wraps ``send`` with something tied to the current task (``asyncio.timeout()``,
            anyio cancel scopes or locks; context variables are fine): each message then goes
            through the connection's writer task (slower: a task switch per message).
        require_identity: refuse callers that name no identity (no valid id header, and
            nothing from ``identify``) instead of minting a new identity for them: HTTP
            routes and the event stream answer 401 ``identity_required``; a WebSocket
            handshake the ``identify`` hook does not vouch for is refused (403).
    """

    identify: Identify | None = None
    allowed_origins: tuple[str, ...] = ()
    public_origins: tuple[str, ...] = ()
    snapshot_size: int = 100
    max_body_bytes: int = 64 * 1024
    max_frame_bytes: int = 64 * 1024
    messages_per_second: float = 20.0
    message_burst: int = 40
    max_connections_per_identity: int = 16
    outbox_size: int = 1024
    send_timeout: float = 10.0
    send_inline: bool = True
    require_identity: bool = False
