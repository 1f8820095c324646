"""progressq in a FastAPI app: an ``APIRouter`` with its routes and the hub's lifespan, and a
dependency naming the caller.

    from fastapi import Depends, FastAPI
    from progressq.fastapi import caller_identity, create_router

    app = FastAPI()
    app.include_router(create_router(hub, prefix="/pq"))

Requires the ``fastapi`` extra: ``pip install "progressq[fastapi]"``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

try:
    from fastapi import APIRouter, HTTPException, Request, WebSocket
    from fastapi.responses import Response as FastAPIResponse
    from starlette.routing import BaseRoute, Route, WebSocketRoute
    from starlette.types import Receive, Scope, Send
    from starlette.websockets import WebSocketDisconnect

    from progressq.starlette import _without_exception_wrapper
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.fastapi needs FastAPI: pip install "progressq[fastapi]"') from exc

import msgspec

from progressq.errors import ForbiddenIdentity
from progressq.hub import Hub, TaskKind
from progressq.messages import ErrorBody, StartedTask, TaskList, TaskView
from progressq.transport import Endpoints, Response, RouteGroup, RouteSpec, TransportSettings
from progressq.transport._routes import inline_schema

__all__ = ("caller_identity", "create_router")

logger = logging.getLogger("progressq.fastapi")

_FORGED = "this client id was not issued by this server"
_ANONYMOUS = "this server serves only identified callers"
_ERROR_SCHEMA = inline_schema(msgspec.json.schema(ErrorBody))


def _schema(value: Any) -> dict[str, Any]:
    return inline_schema(msgspec.json.schema(value))


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or _ERROR_SCHEMA}}}


_FORBIDDEN = _answer("the request presents a client id this server did not issue")
_UNAUTHORIZED = _answer("the request names no identity and the server requires one")
_NOT_FOUND = _answer("no such task among the caller's")
_UNAVAILABLE = _answer("the hub is not running, the backend is unavailable or the queue is full")

_RESPONSES: dict[str, dict[int | str, dict[str, Any]]] = {
    "start": {
        202: _answer("the task was queued", _schema(StartedTask)),
        400: _answer("the body is not JSON"),
        401: _UNAUTHORIZED,
        403: _FORBIDDEN,
        404: _answer("no task of this kind can be started here"),
        413: _answer("the body is over the size limit"),
        422: _answer("a field of the params (or the name) is missing, of the wrong type or out of range"),
        503: _UNAVAILABLE,
    },
    "list_tasks": {
        200: _answer("the caller's tasks, newest first", _schema(TaskList)),
        401: _UNAUTHORIZED,
        403: _FORBIDDEN,
        503: _UNAVAILABLE,
    },
    "get_task": {
        200: _answer("the task", _schema(TaskView)),
        401: _UNAUTHORIZED,
        403: _FORBIDDEN,
        404: _NOT_FOUND,
        503: _UNAVAILABLE,
    },
    "cancel_task": {
        200: _answer("the task was queued and is now cancelled", _schema(TaskView)),
        202: _answer("the task's worker was told to stop it", _schema(TaskView)),
        401: _UNAUTHORIZED,
        403: _FORBIDDEN,
        404: _NOT_FOUND,
        409: _answer("the task has already finished"),
        503: _UNAVAILABLE,
    },
    "health": {503: {"description": "the hub is not running or its backend does not answer"}},
    "status": {503: _UNAVAILABLE},
}


def _reply(response: Response) -> FastAPIResponse:
    return FastAPIResponse(response.body, response.status, response.headers, media_type=response.media_type)


def _start_openapi(kind: TaskKind | None) -> dict[str, Any]:
    schema = kind.params_schema() if kind is not None else {"type": "object"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(schema)}}},
        "parameters": [
            {
                "name": "name",
                "in": "query",
                "required": False,
                "description": "the task's display name (1 to 200 characters); the kind's name when omitted",
                "schema": {"type": "string"},
            },
            {
                "name": "key",
                "in": "query",
                "required": False,
                "description": "a unique key (1 to 200 characters): the caller's unfinished task with it "
                "is answered instead of starting another",
                "schema": {"type": "string"},
            },
        ],
    }


class _ProgressQEndpoint:
    """Marks an endpoint as progressq's, to tell its routes from the app's own."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call(scope, receive, send)


def create_router(
    hub: Hub,
    settings: TransportSettings | None = None,
    *,
    prefix: str = "",
    groups: Iterable[RouteGroup] | None = ("tasks", "live", "ops"),
    tags: Sequence[str] = ("progressq",),
) -> APIRouter:
    """An ``APIRouter`` with progressq's routes for ``hub``, to ``app.include_router(...)``.

    Each task kind registered before this call gets its own start route in the app's OpenAPI
    (``POST {prefix}/api/tasks/{kind}``, its body the kind's params schema); kinds registered
    later are served too, without an OpenAPI entry. The router's lifespan opens the hub
    inside the app's own lifespan (FastAPI runs an included router's lifespan within the
    app's), and first checks that no route of the app clashes with one of progressq's: an app
    startup fails naming the clash rather than have one route silently take the other's
    requests.

    Args:
        hub: the hub to serve.
        settings: limits and hooks; the defaults when omitted.
        prefix: the path progressq's routes sit under (``"/pq"``); the root when omitted.
        groups: the route groups to serve; all but ``index`` when omitted.
        tags: the OpenAPI tags of progressq's routes.
    """
    endpoints = Endpoints(hub, settings, prefix=prefix, groups=groups)
    router_box: list[APIRouter] = []

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        own, served = _app_routes(app.router.routes, router_box[0])
        endpoints.check_not_shadowing(own, served)
        async with endpoints.running():
            yield

    router = APIRouter(lifespan=lifespan, tags=list(tags))
    router_box.append(router)
    for spec in endpoints.table:
        _add(router, endpoints, spec)
    return router


def _add(router: APIRouter, endpoints: Endpoints, spec: RouteSpec) -> None:
    if spec.endpoint == "ws":

        async def events(scope: Scope, receive: Receive, send: Send) -> None:
            send = _without_exception_wrapper(send)  # as the Starlette adapter: a coroutine less per message
            await endpoints.serve(WebSocket(scope, receive, send), receive, send, gone=(WebSocketDisconnect,))

        router.routes.append(WebSocketRoute(spec.path, _ProgressQEndpoint(events), name=spec.name))
        return
    if spec.endpoint == "events":
        # POST: the cookie that names the caller's stream without the id in its URL.
        methods = ["GET", "POST"]
        router.routes.append(Route(spec.path, _ProgressQEndpoint(endpoints.events), methods=methods, name=spec.name))
        return

    async def handle(request: Request) -> FastAPIResponse:
        answer = await endpoints.respond(spec, request, request.receive, request.path_params, request.query_params)
        return _reply(answer)

    handle.__doc__ = spec.summary
    handle._progressq = True  # type: ignore[attr-defined]  # tells this route from the app's own
    is_start = spec.endpoint == "start"
    router.add_api_route(
        spec.path,
        handle,
        methods=[spec.method],
        name=spec.name,
        summary=f"Start a task: {spec.kind.name}" if spec.kind is not None else None,
        description=spec.summary,
        status_code=202 if is_start else 200,
        include_in_schema=spec.in_schema,
        responses=_RESPONSES.get(spec.endpoint),
        openapi_extra=_start_openapi(spec.kind) if is_start else None,
        response_class=FastAPIResponse,
    )


def _is_ours(route: BaseRoute) -> bool:
    endpoint = getattr(route, "endpoint", None)
    if getattr(endpoint, "_progressq", False):
        return True
    return isinstance(endpoint, _ProgressQEndpoint) or isinstance(getattr(route, "app", None), _ProgressQEndpoint)


def _app_routes(
    routes: Iterable[BaseRoute], ours: APIRouter, prefix: str = ""
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The app's own routes and progressq's, as ``(method, path)``, through included routers."""
    own: list[tuple[str, str]] = []
    served: list[tuple[str, str]] = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps an included router whole
        if included is not None:
            context = getattr(route, "include_context", None)
            nested = f"{prefix}{getattr(context, 'prefix', '')}"
            if included is ours:
                served += _paths(included.routes, nested)
            else:
                more_own, more_served = _app_routes(included.routes, ours, nested)
                own += more_own
                served += more_served
            continue
        (served if _is_ours(route) else own).extend(_paths([route], prefix))
    return own, served


def _paths(routes: Iterable[BaseRoute], prefix: str) -> list[tuple[str, str]]:
    paths: list[tuple[str, str]] = []
    for route in routes:
        path = getattr(route, "path", None)
        if path is None:
            continue
        if isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            paths.append(("WS", prefix + path))
        else:
            paths += [(m, prefix + path) for m in getattr(route, "methods", None) or () if m != "HEAD"]
    return paths


def caller_identity(
    hub: Hub, settings: TransportSettings | None = None, *, mint: bool = True
) -> Callable[[Request], Awaitable[str]]:
    """A dependency naming the caller of one of the app's own requests, for ``Depends``::

        identity = caller_identity(hub)

        @app.post("/reports")
        async def report(owner: Annotated[str, Depends(identity)]) -> dict[str, str]:
            task = await hub.submit("report", owner=owner, params=Report(month="2026-01"))
            return {"taskId": task.id, "clientId": owner}

    The identity is the one the request presents (``X-Socket-Id``, ``X-Session-Id`` or
    ``X-Client-Id``, checked), else the one ``settings.identify`` vouches for, else a new one
    (hand it back to the caller as its ``clientId``).

    Args:
        hub: the hub whose identities are checked.
        settings: the same settings as the router's (its ``identify`` hook and
            ``require_identity``).
        mint: mint a new identity for a caller that names none; with False (or
            ``require_identity``) such a caller gets 401.

    The dependency answers (in FastAPI's error shape, ``{"detail": {"code", "message"}}``)
    403 ``forbidden_identity`` for an id this server did not issue, and 401
    ``identity_required`` as above.
    """
    endpoints = Endpoints(hub, settings, groups=())

    async def identity(request: Request) -> str:
        caller = endpoints.caller(request)
        try:
            if mint and not endpoints.settings.require_identity:
                return await caller.identity_or_new()
            owner = await caller.identity()
        except ForbiddenIdentity:
            raise HTTPException(403, {"code": "forbidden_identity", "message": _FORGED}) from None
        if owner is None:
            raise HTTPException(401, {"code": "identity_required", "message": _ANONYMOUS})
        return owner

    return identity
