"""What every framework adapter shares: the request view, the ASGI socket, the caller."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from progressq.errors import ConfigurationError
from progressq.hub import Hub
from progressq.transport._identity import IdentityResolver, warn_if_any_origin
from progressq.transport._routes import RouteGroup, RouteSpec, find_shadowed, normalize_prefix, route_table
from progressq.transport._settings import RequestInfo, TransportSettings
from progressq.transport.http import HttpApi, Response, hub_not_running_response
from progressq.transport.sse import EventStreamSession
from progressq.transport.websocket import PeerGone, WebSocketSession

CLOSE_TRY_AGAIN_LATER = 1013

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

    # How the connection may send (see ``Peer``): inline, as an ASGI send takes no locks,
    # and through the server's ``send`` itself, translating the ``gone`` errors.
    sends_inline = True
    asgi_send: Send
    gone_errors: tuple[type[Exception], ...]

    def __init__(
        self,
        receive: Receive,
        send: Send,
        gone: tuple[type[Exception], ...] = (),
    ) -> None:
        self._receive = receive
        self._send = send
        self._gone: tuple[type[Exception], ...] = (*gone, RuntimeError, OSError)
        self.asgi_send, self.gone_errors = send, self._gone

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
        # Not through ``_deliver``: one coroutine less on every event's path.
        try:
            await self._send({"type": "websocket.send", "text": text})
        except self._gone as exc:
            raise PeerGone from exc

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

    async def identity(self, presented: str | None = None) -> str | None:
        """The caller's identity, or None when the request names none.

        Args:
            presented: an id the caller presents another way (say, in its body); checked
                like the headers, and preferred to them.

        Raises:
            ForbiddenIdentity: the request presents an id this server did not issue.
        """
        return await self._resolver.caller(self.request, presented)

    async def identity_or_new(self, presented: str | None = None) -> str:
        """The caller's identity, or a newly minted one to hand back to the caller.

        Raises:
            ForbiddenIdentity: the request presents an id this server did not issue.
        """
        return await self._resolver.caller_or_new(self.request, presented)


class Endpoints:
    """The routes of one hub (see :func:`~progressq.transport.route_table`), as an adapter on
    an ASGI framework calls them.

    An adapter registers each spec of :attr:`table`: HTTP ones call :meth:`respond`, ``WS``
    calls :meth:`serve`, ``events`` mounts :attr:`stream`; and it runs :meth:`running` in the
    app's lifespan.

    Args:
        hub: the hub to serve.
        settings: limits and hooks; the defaults when omitted.
        prefix: the path every route sits under (``"/pq"``).
        groups: the route groups to serve; all when omitted.
    """

    def __init__(
        self,
        hub: Hub,
        settings: TransportSettings | None = None,
        *,
        prefix: str = "",
        groups: Iterable[RouteGroup] | None = None,
    ) -> None:
        self.hub = hub
        self.settings = settings or TransportSettings()
        self.prefix = normalize_prefix(prefix)
        self.table = route_table(hub, prefix=self.prefix, groups=groups)
        self.api = HttpApi(hub, self.settings)
        self.session = WebSocketSession(hub, self.settings)
        self.stream = EventStreamSession(hub, self.settings)

    info = staticmethod(request_info)

    async def respond(
        self,
        spec: RouteSpec,
        request: Connection,
        receive: Receive,
        path_params: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Response:
        """Answer one HTTP request to the route ``spec``.

        Args:
            spec: the route.
            request: the framework's request (headers, client).
            receive: its ASGI ``receive``, for the body of a start route.
            path_params: ``task_id`` or ``kind`` from the path.
            query: the query parameters (a start route's ``name`` and ``key``).
        """
        api, info = self.api, request_info(request)
        match spec.endpoint:
            case "index":
                return await api.index([r for r in self.table if r.in_schema])
            case "health":
                return await api.health()
            case "status":
                return await api.status()
            case "start":
                kind = spec.kind.name if spec.kind is not None else path_params["kind"]
                return await api.start_task(
                    info, kind, asgi_body(receive), name=query.get("name"), key=query.get("key")
                )
            case "list_tasks":
                return await api.list_tasks(info)
            case "get_task":
                return await api.get_task(info, path_params["task_id"])
            case "cancel_task":
                return await api.cancel_task(info, path_params["task_id"])
        raise ValueError(f"{spec.endpoint} is not an HTTP route")

    async def serve(
        self, websocket: Connection, receive: Receive, send: Send, gone: tuple[type[Exception], ...] = ()
    ) -> None:
        """``/ws``: one connection, over the framework's websocket ``receive``/``send``."""
        if not self.hub.is_running:
            hub_not_running_response()  # logs the fix once
            peer = AsgiWebSocketPeer(receive, send, gone)
            with contextlib.suppress(PeerGone):
                await peer.accept()
                await peer.close(CLOSE_TRY_AGAIN_LATER, "the task hub is not running")
            return
        await self.session.serve(AsgiWebSocketPeer(receive, send, gone), request_info(websocket))

    async def events(self, scope: Any, receive: Receive, send: Send) -> None:
        """``/api/events``: the event stream, as a plain ASGI app."""
        if not self.hub.is_running:
            answer = hub_not_running_response()
            headers = [(b"content-type", answer.media_type.encode())]
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            await send({"type": "http.response.body", "body": answer.body})
            return
        await self.stream(scope, receive, send)

    def caller(self, request: Connection) -> Caller:
        """The :class:`Caller` of one of the app's own requests."""
        return Caller(self.hub, self.settings, request_info(request))

    def check_not_shadowing(
        self, app_routes: Iterable[tuple[str, str]], served: Iterable[tuple[str, str]] | None = None
    ) -> None:
        """Fail when one of the app's own routes (``(method, path)``, ``WS`` for a WebSocket)
        clashes with one of progressq's: whichever came first would silently take the other's
        requests.

        Args:
            app_routes: the app's own routes.
            served: progressq's routes as the app serves them (under any prefix the app
                added); :attr:`table`'s when omitted.

        Raises:
            ConfigurationError: naming the clashing routes and the fix.
        """
        ours = served if served is not None else [(spec.method, spec.path) for spec in self.table]
        if clashes := find_shadowed(ours, app_routes):
            raise ConfigurationError(
                f"progressq's routes would clash with the app's own {clashes}: mount progressq under "
                "a prefix (prefix='/pq') or switch the group off (groups=...)"
            )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The hub, open."""
        warn_if_any_origin(self.settings)
        async with self.hub:
            yield
