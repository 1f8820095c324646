"""Mount progressq into a Starlette app: every route of PROTOCOL.md, and the hub's lifespan.

    from progressq.starlette import mount

    app = Starlette(routes=[...your routes...])
    mount(app, hub)

Requires the ``starlette`` extra: ``pip install "progressq[starlette]"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
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
from progressq.transport import Endpoints, Response, TransportSettings
from progressq.transport.http import forbidden_response
from progressq.transport.sse import EventStreamSession

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


def routes(hub: Hub, settings: TransportSettings | None = None) -> list[BaseRoute]:
    """The routes of PROTOCOL.md for ``hub``. Mount them and open the hub in the lifespan
    yourself, or use :func:`mount`, which does both."""
    return _routes(Endpoints(hub, settings))


def _routes(endpoints: Endpoints) -> list[BaseRoute]:
    api = endpoints.api

    def endpoint(call: Callable[..., Any], *, with_request: bool = True) -> Callable[[Request], Any]:
        async def handle(request: Request) -> StarletteResponse:
            args: list[Any] = [endpoints.info(request)] if with_request else []
            args.extend(request.path_params.values())
            return _reply(await call(*args))

        return handle

    async def start(request: Request) -> StarletteResponse:
        return _reply(await endpoints.start(request, request.receive))

    async def websocket_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        # An ASGI endpoint: the connection speaks straight to the server's ``receive`` and
        # ``send`` (every message skips a layer); the WebSocket object serves only as the
        # request (headers, client, query) an ``identify`` hook may read.
        await endpoints.serve(WebSocket(scope, receive, send), receive, send, gone=(WebSocketDisconnect,))

    result: list[BaseRoute] = []
    if endpoints.settings.include_index:
        result.append(Route("/", endpoint(api.index, with_request=False), methods=["GET"], name="progressq:index"))
    result += [
        Route("/health", endpoint(api.health, with_request=False), methods=["GET"], name="progressq:health"),
        Route("/api/task/status", endpoint(api.status, with_request=False), methods=["GET"], name="progressq:status"),
        Route("/api/task/start", start, methods=["POST"], name="progressq:start"),
        Route("/api/tasks", endpoint(api.list_tasks), methods=["GET"], name="progressq:tasks"),
        Route("/api/task/{task_id}", endpoint(api.get_task), methods=["GET"], name="progressq:task"),
        Route("/api/task/{task_id}/cancel", endpoint(api.cancel_task), methods=["POST"], name="progressq:cancel"),
        WebSocketRoute("/ws", _AsgiEndpoint(websocket_endpoint), name="progressq:ws"),
        Route("/api/events", EventStreamSession(api.hub, endpoints.settings), name="progressq:events"),
    ]
    return result


def mount(app: Starlette, hub: Hub, settings: TransportSettings | None = None) -> Endpoints:
    """Add progressq's routes to ``app`` and open ``hub`` for the app's lifetime.

    The app's own routes, middleware, exception handlers and lifespan are kept; the hub
    opens before the app's own lifespan starts and closes after it ends.

    Returns:
        The endpoints; ``endpoints.caller(request)`` names the caller of one of the app's
        own requests, to submit a task for them.
    """
    endpoints = Endpoints(hub, settings)
    app.router.routes.extend(_routes(endpoints))
    app.exception_handlers.setdefault(ForbiddenIdentity, _forbidden)  # raised by an app route's Caller
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        async with endpoints.running(), original(instance) as state:
            yield state

    app.router.lifespan_context = lifespan
    return endpoints


def create_app(hub: Hub, settings: TransportSettings | None = None, *, debug: bool = False) -> Starlette:
    """A new Starlette app serving only progressq."""
    app = Starlette(debug=debug)
    mount(app, hub, settings)
    return app
