"""The Starlette and FastAPI adapters' WebSocket sends: straight to the server's ``send`` past
Starlette's exception wrapper, never past an application's middleware."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from progressq import Hub, MemoryBackend
from progressq.starlette import _without_exception_wrapper, routes
from tests.waiting import PATIENCE

SECRET = "starlette-send-tests-secret-0123456789"


@pytest.mark.anyio
async def test_the_exception_wrapper_is_taken_off_and_nothing_else() -> None:
    async def server_send(message: Message) -> None:
        pass

    seen: list[Send] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(send)

    async def receive() -> Message:
        return {}

    request = Request({"type": "http", "headers": []})
    await wrap_app_handling_exceptions(endpoint, request)({"type": "websocket"}, receive, server_send)
    (wrapped,) = seen
    assert wrapped is not server_send  # Starlette wraps it ...
    assert _without_exception_wrapper(wrapped) is server_send  # ... and the adapter unwraps it
    assert _without_exception_wrapper(server_send) is server_send

    async def middleware_send(message: Message) -> None:
        await server_send(message)

    assert _without_exception_wrapper(middleware_send) is middleware_send


def starlette_app(hub: Hub) -> Any:
    return Starlette(routes=routes(hub, prefix="/pq"))


def fastapi_app(hub: Hub) -> Any:
    from fastapi import FastAPI

    from progressq.fastapi import create_router

    app = FastAPI()
    app.include_router(create_router(hub, prefix="/pq"))
    return app


@pytest.mark.anyio
@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
async def test_an_application_middleware_still_sees_every_websocket_message(make_app: Any) -> None:
    sent: list[str] = []
    to_client: list[str] = []

    class CountingMiddleware:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def counting_send(message: Message) -> None:
                if message["type"] == "websocket.send":
                    sent.append(message["text"])
                await send(message)

            await self.app(scope, receive, counting_send)

    hub = Hub(MemoryBackend(), secret=SECRET)
    app = make_app(hub)
    app.add_middleware(CountingMiddleware)
    leave = anyio.Event()
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await leave.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def server_send(message: Message) -> None:
        if message["type"] == "websocket.send":
            to_client.append(message["text"])
            if len(to_client) == 2:  # connection and snapshot
                leave.set()

    scope = {"type": "websocket", "path": "/pq/ws", "raw_path": b"/pq/ws", "query_string": b"", "headers": []}
    scope |= {"client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "ws", "root_path": ""}
    async with hub:
        with anyio.fail_after(PATIENCE):
            await app(scope, receive, server_send)
    assert len(to_client) == 2
    assert sent == to_client
