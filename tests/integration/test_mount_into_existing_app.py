"""progressq mounted into an app that has routes, middleware, exception handlers and a lifespan
of its own: each framework's app keeps all of them, and its own routes can submit tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from fastapi.responses import JSONResponse as FastAPIJSONResponse
from litestar import Litestar, Request, Response, get, post
from litestar.di import NamedDependency
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from progressq import Hub, MemoryBackend
from progressq.fastapi import caller_identity, create_router
from progressq.litestar import ProgressQPlugin
from progressq.starlette import mount
from progressq.transport import Caller, TransportSettings
from tests.apps import make_hub, serve
from tests.integration.client import WsClient, start_kind, terminal
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

Events = list[str]


class AppError(Exception):
    """The app's own error, answered by the app's own exception handler."""


class TagMiddleware:
    """The app's own middleware (plain ASGI): tags every HTTP response it sees."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-app", b"tagged")]
            await send(message)

        await self.app(scope, receive, send if scope["type"] != "http" else tagged)


class RecordingBackend(MemoryBackend):
    """Records when the hub opens and closes its backend, among the app's own lifespan events."""

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events = events

    async def __aenter__(self) -> RecordingBackend:
        await super().__aenter__()
        self.events.append("hub open")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.events.append("hub closed")
        await super().__aexit__(*exc)


def lifespan_of(events: Events) -> Callable[[Any], Any]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("app lifespan start")
        yield
        events.append("app lifespan end")

    return lifespan


def starlette_app(hub: Hub, events: Events) -> Starlette:
    async def hello(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    async def boom(request: StarletteRequest) -> JSONResponse:
        raise AppError("boom")

    async def report(request: StarletteRequest) -> JSONResponse:
        owner = await endpoints.caller(request).identity_or_new()
        task = await hub.submit("demo", owner=owner, name="report", params={"duration": 1000})
        return JSONResponse({"taskId": task.id, "clientId": owner}, status_code=202)

    async def on_app_error(request: StarletteRequest, exc: Exception) -> JSONResponse:
        return JSONResponse({"handled": str(exc)}, status_code=418)

    async def not_found(request: StarletteRequest, exc: Exception) -> JSONResponse:
        return JSONResponse({"app": "not found"}, status_code=404)

    app = Starlette(
        routes=[Route("/hello", hello), Route("/boom", boom), Route("/reports", report, methods=["POST"])],
        middleware=[Middleware(TagMiddleware)],
        exception_handlers={AppError: on_app_error, 404: not_found},
        lifespan=lifespan_of(events),
    )
    endpoints = mount(app, hub, TransportSettings())
    return app


def litestar_app(hub: Hub, events: Events) -> Litestar:
    @get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @get("/boom")
    async def boom() -> None:
        raise AppError("boom")

    @post("/reports", status_code=202)
    async def report(hub: NamedDependency[Hub], caller: NamedDependency[Caller]) -> dict[str, str]:
        owner = await caller.identity_or_new()
        task = await hub.submit("demo", owner=owner, name="report", params={"duration": 1000})
        return {"taskId": task.id, "clientId": owner}

    def on_app_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
        return Response({"handled": str(exc)}, status_code=418)

    def not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
        return Response({"app": "not found"}, status_code=404)

    return Litestar(
        route_handlers=[hello, boom, report],
        middleware=[TagMiddleware],
        exception_handlers={AppError: on_app_error, 404: not_found},
        lifespan=[lifespan_of(events)],
        on_startup=[lambda: events.append("app startup")],
        on_shutdown=[lambda: events.append("app shutdown")],
        plugins=[ProgressQPlugin(hub, TransportSettings())],
    )


def fastapi_app(hub: Hub, events: Events) -> FastAPI:
    app = FastAPI(lifespan=lifespan_of(events), middleware=[Middleware(TagMiddleware)])
    app.include_router(create_router(hub))
    identity = caller_identity(hub)

    @app.exception_handler(AppError)
    async def on_app_error(request: FastAPIRequest, exc: AppError) -> FastAPIJSONResponse:
        return FastAPIJSONResponse({"handled": str(exc)}, status_code=418)

    @app.exception_handler(404)
    async def not_found(request: FastAPIRequest, exc: Exception) -> FastAPIJSONResponse:
        return FastAPIJSONResponse({"app": "not found"}, status_code=404)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/boom")
    async def boom() -> None:
        raise AppError("boom")

    @app.post("/reports", status_code=202)
    async def report(owner: str = Depends(identity)) -> dict[str, str]:
        task = await hub.submit("demo", owner=owner, name="report", params={"duration": 1000})
        return {"taskId": task.id, "clientId": owner}

    return app


APPS: dict[str, Callable[[Hub, Events], Any]] = {
    "starlette": starlette_app,
    "litestar": litestar_app,
    "fastapi": fastapi_app,
}

# Starlette, Litestar: the hub opens before any of the app's own lifespan code runs and closes
# after all of it. FastAPI runs an included router's lifespan inside the app's own.
WHILE_SERVING = {
    "starlette": ["hub open", "app lifespan start"],
    "litestar": ["hub open", "app lifespan start", "app startup"],
    "fastapi": ["app lifespan start", "hub open"],
}
AFTER_SHUTDOWN = {
    "starlette": [*WHILE_SERVING["starlette"], "app lifespan end", "hub closed"],
    "litestar": [*WHILE_SERVING["litestar"], "app lifespan end", "app shutdown", "hub closed"],
    "fastapi": [*WHILE_SERVING["fastapi"], "hub closed", "app lifespan end"],
}
ADAPTERS = pytest.mark.parametrize("adapter", sorted(APPS))


@ADAPTERS
async def test_the_apps_own_routes_middleware_handlers_and_lifespan_are_kept(adapter: str) -> None:
    events: Events = []
    hub = make_hub(backend=RecordingBackend(events))
    with serve(APPS[adapter](hub, events), hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            hello = await http.get("/hello")
            assert (hello.status_code, hello.json()) == (200, {"hello": "world"})
            assert hello.headers["x-app"] == "tagged"
            boom = await http.get("/boom")
            assert (boom.status_code, boom.json()) == (418, {"handled": "boom"})
            unknown = await http.get("/no-such-page")
            assert (unknown.status_code, unknown.json()) == (404, {"app": "not found"})

            # progressq's own answers are its own, even where the app has a handler for the status.
            missing = await http.get("/api/task/missing", headers={"X-Client-Id": hub.identities.mint()})
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"
            async with await WsClient.open(server.ws) as ws:
                assert (await ws.next())["type"] == "snapshot"
                answer = await start_kind(
                    http, "demo", {"duration": 1000}, name="beside", **{"X-Socket-Id": ws.socket_id}
                )
                started = answer.json()
                final = (await ws.until(terminal(started["id"])))[-1]["task"]
                assert final["status"] == "completed"
        assert events == WHILE_SERVING[adapter]
    assert events == AFTER_SHUTDOWN[adapter]


@ADAPTERS
async def test_an_apps_own_route_submits_a_task_for_the_caller(adapter: str) -> None:
    hub = make_hub()
    with serve(APPS[adapter](hub, []), hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            async with await WsClient.open(server.ws) as ws, await WsClient.open(server.ws) as other:
                await ws.next()
                await other.next()
                response = await http.post("/reports", headers={"X-Socket-Id": ws.socket_id})
                assert response.status_code == 202
                report = response.json()
                assert report["clientId"] == ws.client_id
                messages = await ws.until(terminal(report["taskId"]))
                assert messages[0]["type"] == "taskQueued"
                assert messages[0]["task"]["name"] == "report"
                assert messages[-1]["task"]["status"] == "completed"
                await other.send("ping")
                assert (await other.next())["type"] == "pong"  # nothing of the report reached the other client

            anonymous = (await http.post("/reports")).json()
            assert hub.identities.verify(anonymous["clientId"])
            forged = await http.post("/reports", headers={"X-Client-Id": "made-up-id"})
            assert forged.status_code == 403
            # A FastAPI dependency answers in FastAPI's shape: {"detail": {"code", "message"}}.
            error = forged.json()["detail"] if adapter == "fastapi" else forged.json()["error"]
            assert error["code"] == "forbidden_identity"
