"""Mount progressq into a Litestar app with a plugin: its routes (under a prefix if you like),
the hub's lifespan, and the hub for the app's own handlers by dependency injection.

    from litestar import Litestar
    from progressq.litestar import ProgressQPlugin

    app = Litestar(route_handlers=[...your handlers...], plugins=[ProgressQPlugin(hub)])

Requires the ``litestar`` extra: ``pip install "progressq[litestar]"``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

try:
    from litestar import Litestar, Request, WebSocket, asgi, get, post, websocket
    from litestar import Response as LitestarResponse
    from litestar.config.app import AppConfig
    from litestar.di import Provide
    from litestar.exceptions import WebSocketDisconnect
    from litestar.handlers import BaseRouteHandler
    from litestar.openapi import OpenAPIConfig, ResponseSpec
    from litestar.plugins import InitPlugin
    from litestar.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.litestar needs Litestar: pip install "progressq[litestar]"') from exc

from progressq.errors import ConfigurationError, ForbiddenIdentity
from progressq.hub import Hub, TaskKind
from progressq.messages import ErrorBody, StartedTask, TaskList, TaskView
from progressq.transport import Caller, Endpoints, Response, RouteGroup, RouteSpec, TransportSettings
from progressq.transport.http import forbidden_response

__all__ = ("ProgressQPlugin", "create_app", "route_handlers")

_TAGS = ["progressq"]


def _reply(response: Response) -> LitestarResponse[bytes]:
    return LitestarResponse(
        response.body, status_code=response.status, headers=response.headers, media_type=response.media_type
    )


def _forbidden(request: Request[Any, Any, Any], exc: Exception) -> LitestarResponse[bytes]:
    return _reply(forbidden_response())


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(ErrorBody, description=description, generate_examples=False)


_FORBIDDEN = _error("the request presents a client id this server did not issue")
_NOT_FOUND = _error("no such task among the caller's")
_UNAVAILABLE = _error("the backend is unavailable, or the queue is full (then with Retry-After)")


_START_ERRORS = {
    400: _error("the body is not JSON"),
    401: _error("the request names no identity and the server requires one"),
    403: _FORBIDDEN,
    404: _error("no task of this kind can be started here"),
    413: _error("the body is over the size limit"),
    422: _error("a field of the params (or the name) is missing, of the wrong type or out of range"),
    503: _UNAVAILABLE,
}


def _body_type(kind: TaskKind | None) -> Any:
    if kind is None or kind.params_type is None:
        return dict[str, Any]
    return kind.params_type


def _documented_body(kind: TaskKind | None) -> Callable[..., Any]:
    """A dependency that is never called: it shows Litestar's OpenAPI the body of a kind's start route.

    The route reads its body itself (so malformed JSON, wrong fields and oversized bodies get
    progressq's documented answers, not Litestar's); Litestar's schema generator takes the
    body of a route from a ``data`` parameter of the route's dependencies as well.
    """

    async def documented(data: Any) -> Any:
        return data

    documented.__annotations__ = {"data": _body_type(kind), "return": _body_type(kind)}
    return documented


def _litestar_path(path: str) -> str:
    return path.replace("{task_id}", "{task_id:str}").replace("{kind}", "{kind:str}")


def route_handlers(
    hub: Hub,
    settings: TransportSettings | None = None,
    *,
    prefix: str = "",
    groups: Iterable[RouteGroup] | None = None,
) -> list[BaseRouteHandler]:
    """The route handlers of progressq for ``hub`` (see :func:`~progressq.transport.route_table`).

    Register them and open the hub in the lifespan yourself, or use :class:`ProgressQPlugin`,
    which does both and more; until the hub is open they answer 503 ``hub_not_running``.
    """
    return _handlers(Endpoints(hub, settings, prefix=prefix, groups=groups))


_RESPONSES: dict[str, dict[int, ResponseSpec]] = {
    "health": {503: ResponseSpec(dict[str, str], description="the hub is not running or its backend does not answer")},
    "status": {503: _UNAVAILABLE},
    "list_tasks": {
        200: ResponseSpec(TaskList, description="the caller's tasks, newest first", generate_examples=False),
        401: _START_ERRORS[401],
        403: _FORBIDDEN,
        503: _UNAVAILABLE,
    },
    "get_task": {
        200: ResponseSpec(TaskView, description="the task", generate_examples=False),
        401: _START_ERRORS[401],
        403: _FORBIDDEN,
        404: _NOT_FOUND,
        503: _UNAVAILABLE,
    },
    "cancel_task": {
        200: ResponseSpec(TaskView, description="the task was queued and is now cancelled", generate_examples=False),
        202: ResponseSpec(TaskView, description="the task's worker was told to stop it", generate_examples=False),
        401: _START_ERRORS[401],
        403: _FORBIDDEN,
        404: _NOT_FOUND,
        409: _error("the task has already finished"),
        503: _UNAVAILABLE,
    },
}


def _handler(endpoints: Endpoints, spec: RouteSpec) -> BaseRouteHandler:
    if spec.endpoint == "ws":

        async def events(socket: WebSocket[Any, Any, Any]) -> None:
            await endpoints.serve(socket, socket.receive, socket.send, gone=(WebSocketDisconnect,))

        return websocket(spec.path, name=spec.name)(events)
    if spec.endpoint == "events":

        async def event_stream(scope: Scope, receive: Receive, send: Send) -> None:
            await endpoints.events(scope, receive, send)

        return asgi(spec.path, name=spec.name, copy_scope=True)(event_stream)
    if spec.endpoint == "start":

        async def start(request: Request[Any, Any, Any]) -> LitestarResponse[bytes]:
            query = {k: v for k in ("name", "key") if (v := request.query_params.get(k)) is not None}
            return _reply(await endpoints.respond(spec, request, request.receive, request.path_params, query))

        start.__doc__ = spec.summary
        return post(
            _litestar_path(spec.path),
            name=spec.name,
            tags=_TAGS,
            status_code=202,
            include_in_schema=spec.in_schema,
            summary=f"Start a task: {spec.kind.name}" if spec.kind else None,
            description=(
                f"{spec.summary}. The body is the task's params; `?name=` sets its display name; with "
                "`?key=`, the caller's unfinished task with that unique key is answered instead of starting another."
            ),
            dependencies={"progressq_start_body": Provide(_documented_body(spec.kind))},
            responses={
                202: ResponseSpec(StartedTask, description="the task was queued", generate_examples=False),
                **_START_ERRORS,
            },
        )(start)

    async def handle(request: Request[Any, Any, Any]) -> LitestarResponse[bytes]:
        return _reply(await endpoints.respond(spec, request, request.receive, request.path_params, {}))

    handle.__doc__ = spec.summary
    route = get if spec.method == "GET" else post
    return route(
        _litestar_path(spec.path),
        name=spec.name,
        tags=_TAGS,
        status_code=200,
        include_in_schema=spec.in_schema,
        description=spec.summary,
        responses=_RESPONSES.get(spec.endpoint),
    )(handle)


def _handlers(endpoints: Endpoints) -> list[BaseRouteHandler]:
    return [_handler(endpoints, spec) for spec in endpoints.table]


class ProgressQPlugin(InitPlugin):
    """A Litestar plugin (an ``InitPlugin``) that serves progressq in an app.

    It adds progressq's routes (each task kind's start route with its params type in the
    app's OpenAPI), opens the hub before the app's own lifespan managers
    and ``on_startup`` hooks and closes it after them and its ``on_shutdown`` hooks, and
    offers two dependencies to the app's own handlers: the hub, and the :class:`Caller`
    of the request (to submit a task for the caller)::

        @post("/reports")
        async def make_report(hub: Hub, caller: Caller) -> dict[str, str]:
            owner = await caller.identity_or_new()
            task = await hub.submit("report", owner=owner, name="monthly report")
            return {"taskId": task.id, "clientId": owner}

    Args:
        hub: the hub to serve.
        settings: limits and hooks; the defaults when omitted.
        prefix: the path progressq's routes sit under (``"/pq"``); the root when omitted.
        groups: the route groups to serve; all but ``index`` when omitted.
        hub_key: the dependency name of the hub.
        caller_key: the dependency name of the :class:`Caller` (HTTP handlers only).
    """

    def __init__(
        self,
        hub: Hub,
        settings: TransportSettings | None = None,
        *,
        prefix: str = "",
        groups: Iterable[RouteGroup] | None = ("tasks", "live", "ops"),
        hub_key: str = "hub",
        caller_key: str = "caller",
    ) -> None:
        self.hub = hub
        self.settings = settings or TransportSettings()
        self.prefix = prefix
        self.groups = groups
        self.hub_key = hub_key
        self.caller_key = caller_key

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        endpoints = Endpoints(self.hub, self.settings, prefix=self.prefix, groups=self.groups)

        def provide_hub() -> Hub:
            return endpoints.hub

        def provide_caller(request: Request[Any, Any, Any]) -> Caller:
            return endpoints.caller(request)

        @asynccontextmanager
        async def open_hub(app: Litestar) -> AsyncIterator[None]:
            async with endpoints.running():
                yield

        for key in (self.hub_key, self.caller_key):
            if key in app_config.dependencies:
                raise ConfigurationError(f"the app already has a dependency {key!r}; pass ProgressQPlugin({key}=...)")
        app_config.dependencies[self.hub_key] = Provide(provide_hub, sync_to_thread=False)
        app_config.dependencies[self.caller_key] = Provide(provide_caller, sync_to_thread=False)
        app_config.route_handlers.extend(_handlers(endpoints))
        app_config.exception_handlers.setdefault(ForbiddenIdentity, _forbidden)
        # Litestar runs on_shutdown hooks after its lifespan managers have exited; run the
        # app's inside the hub's lifetime instead, right after its own managers exit.
        shutdown = list(app_config.on_shutdown)
        app_config.on_shutdown = []
        app_config.lifespan = [open_hub, _hooks_on_exit(shutdown), *app_config.lifespan]
        return app_config


def _hooks_on_exit(hooks: Sequence[Callable[..., Any]]) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def run_hooks(app: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for hook in hooks:  # Litestar's order: the first registered runs first
                result = hook(app) if inspect.signature(hook).parameters else hook()
                if inspect.isawaitable(result):
                    await result

    return run_hooks


def create_app(
    hub: Hub,
    settings: TransportSettings | None = None,
    *,
    prefix: str = "",
    groups: Iterable[RouteGroup] | None = None,
    debug: bool = False,
) -> Litestar:
    """A new Litestar app serving only progressq (every route group when ``groups`` is
    omitted), and its OpenAPI schema at ``/schema``."""
    from progressq import __version__

    return Litestar(
        plugins=[ProgressQPlugin(hub, settings, prefix=prefix, groups=groups)],
        openapi_config=OpenAPIConfig(title="progressq", version=__version__),
        debug=debug,
    )
