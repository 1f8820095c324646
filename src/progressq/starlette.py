"""Mount progressq into a Starlette app: its routes (under a prefix if you like), and the hub's lifespan.

    from progressq.starlette import mount

    app = Starlette(routes=[...your routes...])
    mount(app, hub, prefix="/pq")

Requires the ``starlette`` extra: ``pip install "progressq[starlette]"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response as StarletteResponse
    from starlette.routing import BaseRoute, Route, WebSocketRoute
    from starlette.types import Receive, Scope, Send
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.starlette needs Starlette: pip install "progressq[starlette]"') from exc

from progressq.errors import ForbiddenIdentity
from progressq.hub import Hub
from progressq.transport import Endpoints, Response, RouteGroup, RouteSpec, TransportSettings
from progressq.transport.http import forbidden_response

__all__ = ("create_app", "mount", "routes")


def _reply(response: Response) -> StarletteResponse:
    return StarletteResponse(response.body, response.status, response.headers, media_type=response.media_type)


async def _forbidden(request: Request, exc: Exception) -> StarletteResponse:
    return _reply(forbidden_response())


class _AsgiEndpoint:
    """Marks an ASGI callable as such for Starlette's routes (a plain function would be
    taken for a ``websocket -> None`` endpoint)."""

    __slots__ = ("_app",)

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


_EXCEPTION_SENDER = (
    "starlette._exception_handler",
    "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender",
)


def _without_exception_wrapper(send: Send) -> Send:
    """The ``send`` that Starlette's exception middleware wraps, when ``send`` is that wrapper.

    The wrapper only notes an ``http.response.start`` (to refuse an error response after
    one), which a WebSocket never sends, and costs a coroutine per message. Any other
    ``send`` (an application middleware's, or the wrapper of a Starlette that changed it) is
    kept as it is.
    """
    if (getattr(send, "__module__", None), getattr(send, "__qualname__", None)) != _EXCEPTION_SENDER:
        return send
    code, cells = getattr(send, "__code__", None), getattr(send, "__closure__", None) or ()
    names = code.co_freevars if code is not None else ()
    inner = dict(zip(names, cells, strict=False)).get("send")
    wrapped = inner.cell_contents if inner is not None else None
    return wrapped if callable(wrapped) else send


def routes(
    hub: Hub,
    settings: TransportSettings | None = None,
    *,
    prefix: str = "",
    groups: Iterable[RouteGroup] | None = None,
) -> list[BaseRoute]:
    """The routes of progressq for ``hub`` (see :func:`~progressq.transport.route_table`).

    Add them to your app and open the hub in your lifespan yourself (``async with hub:``),
    or use :func:`mount`, which does both; until the hub is open they answer 503
    ``hub_not_running``.
    """
    return _routes(Endpoints(hub, settings, prefix=prefix, groups=groups))


def _routes(endpoints: Endpoints) -> list[BaseRoute]:
    def http_endpoint(spec: RouteSpec) -> Callable[[Request], Any]:
        async def handle(request: Request) -> StarletteResponse:
            answer = await endpoints.respond(spec, request, request.receive, request.path_params, request.query_params)
            return _reply(answer)

        return handle

    async def websocket_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        # An ASGI endpoint: the connection speaks straight to the server's ``receive`` and
        # ``send`` (every message skips a layer); the WebSocket object serves only as the
        # request (headers, client, query) an ``identify`` hook may read.
        send = _without_exception_wrapper(send)
        await endpoints.serve(WebSocket(scope, receive, send), receive, send, gone=(WebSocketDisconnect,))

    result: list[BaseRoute] = []
    for spec in endpoints.table:
        if spec.endpoint == "ws":
            result.append(WebSocketRoute(spec.path, _AsgiEndpoint(websocket_endpoint), name=spec.name))
        elif spec.endpoint == "events":
            # POST: the cookie that names the caller's stream without the id in its URL.
            result.append(Route(spec.path, _AsgiEndpoint(endpoints.events), methods=["GET", "POST"], name=spec.name))
        else:
            result.append(Route(spec.path, http_endpoint(spec), methods=[spec.method], name=spec.name))
    return result


def _own_routes(app: Starlette, ours: list[BaseRoute]) -> list[tuple[str, str]]:
    """The app's own routes, as ``(method, path)``."""
    own: list[tuple[str, str]] = []
    for route in app.router.routes:
        if any(route is mine for mine in ours):
            continue
        if isinstance(route, Route):
            own += [(method, route.path) for method in route.methods or () if method != "HEAD"]
        elif isinstance(route, WebSocketRoute):
            own.append(("WS", route.path))
    return own


def mount(
    app: Starlette,
    hub: Hub,
    settings: TransportSettings | None = None,
    *,
    prefix: str = "",
    groups: Iterable[RouteGroup] | None = ("tasks", "live", "ops"),
) -> Endpoints:
    """Add progressq's routes to ``app`` and open ``hub`` for the app's lifetime.

    The app's own routes, middleware, exception handlers and lifespan are kept; the hub
    opens before the app's own lifespan starts and closes after it ends. An app route with
    the method and path of one of progressq's fails the app's startup (whichever came first
    would take the other's requests): choose a ``prefix`` or switch the group off.

    Args:
        app: the app.
        hub: the hub to serve.
        settings: limits and hooks; the defaults when omitted.
        prefix: the path progressq's routes sit under (``"/pq"``); the root when omitted.
        groups: the route groups to serve; all but ``index`` when omitted.

    Returns:
        The endpoints; ``endpoints.caller(request)`` names the caller of one of the app's
        own requests, to submit a task for them.
    """
    endpoints = Endpoints(hub, settings, prefix=prefix, groups=groups)
    ours = _routes(endpoints)
    app.router.routes.extend(ours)
    app.exception_handlers.setdefault(ForbiddenIdentity, _forbidden)  # raised by an app route's Caller
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        endpoints.check_not_shadowing(_own_routes(app, ours))
        async with endpoints.running(), original(instance) as state:
            yield state

    app.router.lifespan_context = lifespan
    return endpoints


def create_app(
    hub: Hub,
    settings: TransportSettings | None = None,
    *,
    prefix: str = "",
    groups: Iterable[RouteGroup] | None = None,
    debug: bool = False,
) -> Starlette:
    """A new Starlette app serving only progressq (every route group when ``groups`` is omitted).

    Serve it as the app, or mount it into another with :func:`mount`'s ``prefix`` instead of
    ``app.mount("/pq", create_app(hub))``: Starlette runs no lifespan of a mounted app, so its
    hub would never open (its routes then answer 503 ``hub_not_running`` and log the fix).
    """
    app = Starlette(debug=debug)
    mount(app, hub, settings, prefix=prefix, groups=groups)
    return app
