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
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response as StarletteResponse
    from starlette.routing import BaseRoute, Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.starlette needs Starlette: pip install "progressq[starlette]"') from exc

from progressq.hub import Hub
from progressq.transport import (
    BodyTooLarge,
    HttpApi,
    PeerGone,
    RequestInfo,
    Response,
    TransportSettings,
    WebSocketSession,
    read_body,
)
from progressq.transport.http import error_response

__all__ = ("create_app", "mount", "routes")


def _info(connection: HTTPConnection) -> RequestInfo:
    client = connection.client
    return RequestInfo(headers=connection.headers, client=client.host if client else None, raw=connection)


def _reply(response: Response) -> StarletteResponse:
    return StarletteResponse(response.body, response.status, response.headers, media_type=response.media_type)


class _StarlettePeer:
    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def accept(self) -> None:
        await self._websocket.accept()

    async def receive(self) -> str | bytes:
        message = await self._websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise PeerGone
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def send(self, text: str) -> None:
        try:
            await self._websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise PeerGone from exc

    async def close(self, code: int, reason: str = "") -> None:
        try:
            await self._websocket.close(code, reason)
        except (RuntimeError, OSError) as exc:
            raise PeerGone from exc


def routes(hub: Hub, settings: TransportSettings | None = None) -> list[BaseRoute]:
    """The routes of PROTOCOL.md for ``hub``. Mount them and open the hub in the lifespan
    yourself, or use :func:`mount`, which does both."""
    settings = settings or TransportSettings()
    api = HttpApi(hub, settings)
    session = WebSocketSession(hub, settings)

    def endpoint(
        call: Callable[..., Any], *, with_request: bool = True, with_body: bool = False
    ) -> Callable[[Request], Any]:
        async def handle(request: Request) -> StarletteResponse:
            args: list[Any] = [_info(request)] if with_request else []
            if with_body:
                try:
                    body = await read_body(
                        request.stream(),
                        limit=settings.max_body_bytes,
                        content_length=request.headers.get("content-length"),
                    )
                except BodyTooLarge:
                    return _reply(error_response(413, "body_too_large", "the request body is too large"))
                args.append(body)
            args.extend(request.path_params.values())
            return _reply(await call(*args))

        return handle

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await session.serve(_StarlettePeer(websocket), _info(websocket))

    result: list[BaseRoute] = []
    if settings.include_index:
        result.append(Route("/", endpoint(api.index, with_request=False), methods=["GET"], name="progressq:index"))
    result += [
        Route("/health", endpoint(api.health, with_request=False), methods=["GET"], name="progressq:health"),
        Route("/api/task/status", endpoint(api.status, with_request=False), methods=["GET"], name="progressq:status"),
        Route("/api/task/start", endpoint(api.start, with_body=True), methods=["POST"], name="progressq:start"),
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
