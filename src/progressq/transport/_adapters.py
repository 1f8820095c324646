"""What every framework adapter shares: the request view, the ASGI socket, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from progressq.hub import Hub
from progressq.transport._identity import IdentityResolver, warn_if_any_origin
from progressq.transport._settings import RequestInfo, TransportSettings
from progressq.transport.http import HttpApi, Response
from progressq.transport.websocket import PeerGone, WebSocketSession

__all__ = ("AsgiWebSocketPeer", "Caller", "Endpoints", "asgi_body", "request_info")

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
"""An ASGI ``receive``."""
Send = Callable[[Any], Awaitable[None]]
"""An ASGI ``send``."""


class _Address(Protocol):
    @property
    def host(self) -> str: ...


class Connection(Protocol):
    """What Starlette's and Litestar's request and websocket objects both offer."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def client(self) -> _Address | None: ...


def request_info(connection: Connection) -> RequestInfo:
    """The framework-free view of a framework's request or websocket."""
    client = connection.client
    return RequestInfo(headers=connection.headers, client=client.host if client else None, raw=connection)


async def asgi_body(receive: Receive) -> AsyncIterator[bytes]:
    """The body of an ASGI HTTP request, chunk by chunk, straight from its ``receive``.

    Read this way, the body meets only progressq's own size limit, not the framework's.

    Raises:
        PeerGone: the client disconnected before the body ended.
    """
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise PeerGone
        if chunk := message.get("body"):
            yield chunk
        if not message.get("more_body", False):
            return


class AsgiWebSocketPeer:
    """A :class:`~progressq.transport.WebSocketPeer` over ASGI websocket messages.

    Args:
        receive: the framework's ``receive()`` of the connection (ASGI messages).
        send: the framework's ``send(message)`` of the connection.
        gone: the framework's exceptions that mean the client has gone.
    """

    sends_inline = True  # an ASGI send takes no locks: see ``Peer``

    def __init__(
        self,
        receive: Receive,
        send: Send,
        gone: tuple[type[Exception], ...] = (),
    ) -> None:
        self._receive = receive
        self._send = send
        self._gone: tuple[type[Exception], ...] = (*gone, RuntimeError, OSError)

    async def accept(self) -> None:
        if (await self._next())["type"] != "websocket.connect":
            raise PeerGone
        await self._deliver({"type": "websocket.accept"})

    async def receive(self) -> str | bytes:
        message = await self._next()
        if message["type"] != "websocket.receive":
            raise PeerGone
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def send(self, text: str) -> None:
        await self._deliver({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str = "") -> None:
        await self._deliver({"type": "websocket.close", "code": code, "reason": reason})

    async def _next(self) -> Mapping[str, Any]:
        try:
            return await self._receive()
        except self._gone as exc:
            raise PeerGone from exc

    async def _deliver(self, message: dict[str, Any]) -> None:
        try:
            await self._send(message)
        except self._gone as exc:
            raise PeerGone from exc


class Caller:
    """The caller of one request, named the way progressq's own routes name it.

    For an app's own routes that submit tasks: the owner is the identity the request
    presents (``X-Socket-Id``, ``X-Session-Id`` or ``X-Client-Id``, checked), else the one
    the app's ``identify`` hook vouches for.

    Args:
        hub: the hub whose identities are checked.
        settings: the ``identify`` hook to ask.
        request: the request.
    """

    def __init__(self, hub: Hub, settings: TransportSettings, request: RequestInfo) -> None:
        self._resolver = IdentityResolver(hub.identities, settings.identify)
        self.request = request

    async def identity(self) -> str | None:
        """The caller's identity, or None when the request names none.

        Raises:
            ForbiddenIdentity: the request presents an id this server did not issue.
        """
        return await self._resolver.caller(self.request)

    async def identity_or_new(self) -> str:
        """The caller's identity, or a newly minted one to hand back to the caller.

        Raises:
            ForbiddenIdentity: the request presents an id this server did not issue.
        """
        return await self._resolver.caller_or_new(self.request)


class Endpoints:
    """PROTOCOL.md for one hub, as an adapter on an ASGI framework calls it.

    An adapter routes each path to :attr:`api` (``info(request)`` gives the request view),
    ``POST /api/task/start`` to :meth:`start` and ``/ws`` to :meth:`serve`, and runs
    :meth:`running` in the app's lifespan.

    Args:
        hub: the hub to serve.
        settings: limits and hooks; the defaults when omitted.
    """

    def __init__(self, hub: Hub, settings: TransportSettings | None = None) -> None:
        self.hub = hub
        self.settings = settings or TransportSettings()
        self.api = HttpApi(hub, self.settings)
        self.session = WebSocketSession(hub, self.settings)

    info = staticmethod(request_info)

    async def start(self, request: Connection, receive: Receive) -> Response:
        """``POST /api/task/start``, reading the body from the request's ASGI ``receive``."""
        return await self.api.start_streamed(request_info(request), asgi_body(receive))

    async def serve(
        self, websocket: Connection, receive: Receive, send: Send, gone: tuple[type[Exception], ...] = ()
    ) -> None:
        """``/ws``: one connection, over the framework's websocket ``receive``/``send``."""
        await self.session.serve(AsgiWebSocketPeer(receive, send, gone), request_info(websocket))

    def caller(self, request: Connection) -> Caller:
        """The :class:`Caller` of one of the app's own requests."""
        return Caller(self.hub, self.settings, request_info(request))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The hub, open; checked first, so that a misconfigured app fails at startup."""
        self.api.start_kind()
        warn_if_any_origin(self.settings)
        async with self.hub:
            yield
