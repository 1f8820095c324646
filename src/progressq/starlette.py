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
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.starlette needs Starlette: pip install "progressq[starlette]"') from exc

from progressq.errors import ForbiddenIdentity
from progressq.hub import Hub
from progressq.transport import (
    AsgiWebSocketPeer,
    HttpApi,
    Response,
    TransportSettings,
    WebSocketSession,
    request_info,
)
from progressq.transport.http import forbidden_response

__all__ = ("create_app", "mount", "routes")


def _reply(response: Response) -> StarletteResponse:
    return StarletteResponse(response.body, response.status, response.headers, media_type=response.media_type)


async def _forbidden(request: Request, exc: Exception) -> StarletteResponse:
    return _reply(forbidden_response())


def routes(hub: Hub, settings: TransportSettings | None = None) -> list[BaseRoute]:
    """The routes of PROTOCOL.md for ``hub``. Mount them and open the hub in the lifespan
    yourself, or use :func:`mount`, which does both."""
    settings = settings or TransportSettings()
    api = HttpApi(hub, settings)
    session = WebSocketSession(hub, settings)

    def endpoint(call: Callable[..., Any], *, with_request: bool = True) -> Callable[[Request], Any]:
        async def handle(request: Request) -> StarletteResponse:
            args: list[Any] = [request_info(request)] if with_request else []
            args.extend(request.path_params.values())
            return _reply(await call(*args))

        return handle

    async def start(request: Request) -> StarletteResponse:
        return _reply(await api.start_streamed(request_info(request), request.stream()))

    async def websocket_endpoint(websocket: WebSocket) -> None:
        peer = AsgiWebSocketPeer(websocket.receive, websocket.send, gone=(WebSocketDisconnect,))
        await session.serve(peer, request_info(websocket))

    result: list[BaseRoute] = []
    if settings.include_index:
        result.append(Route("/", endpoint(api.index, with_request=False), methods=["GET"], name="progressq:index"))
    result += [
        Route("/health", endpoint(api.health, with_request=False), methods=["GET"], name="progressq:health"),
        Route("/api/task/status", endpoint(api.status, with_request=False), methods=["GET"], name="progressq:status"),
        Route("/api/task/start", start, methods=["POST"], name="progressq:start"),
        Route("/api/tasks", endpoint(api.list_tasks), methods=["GET"], name="progressq:tasks"),
        Route("/api/task/{task_id}", endpoint(api.get_task), methods=["GET"], name="progressq:task"),
        Route("/api/task/{task_id}/cancel", endpoint(api.cancel_task), methods=["POST"], name="progressq:cancel"),
        WebSocketRoute("/ws", websocket_endpoint, name="progressq:ws"),
    ]
    return result


def mount(app: Starlette, hub: Hub, settings: TransportSettings | None = None) -> None:
    """Add progressq's routes to ``app`` and open ``hub`` for the app's lifetime.

    The app's own routes, middleware, exception handlers and lifespan are kept; the hub
    opens before the app's own lifespan starts and closes after it ends.
    """
    settings = settings or TransportSettings()
    app.router.routes.extend(routes(hub, settings))
    app.exception_handlers.setdefault(ForbiddenIdentity, _forbidden)  # raised by an app route's Caller
    api = HttpApi(hub, settings)
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        api.start_kind()  # fail at startup, not on the first request, when misconfigured
        async with hub, original(instance) as state:
            yield state

    app.router.lifespan_context = lifespan


def create_app(hub: Hub, settings: TransportSettings | None = None, *, debug: bool = False) -> Starlette:
    """A new Starlette app serving only progressq."""
    app = Starlette(debug=debug)
    mount(app, hub, settings)
    return app
