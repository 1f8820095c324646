"""Mount progressq into a Litestar app with a plugin: every route of PROTOCOL.md, the hub's
lifespan, and the hub for the app's own handlers by dependency injection.

    from litestar import Litestar
    from progressq.litestar import ProgressQPlugin

    app = Litestar(route_handlers=[...your handlers...], plugins=[ProgressQPlugin(hub)])

Requires the ``litestar`` extra: ``pip install "progressq[litestar]"``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
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
    from litestar.plugins import InitPluginProtocol
    from litestar.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.litestar needs Litestar: pip install "progressq[litestar]"') from exc

from progressq.errors import ConfigurationError, ForbiddenIdentity
from progressq.hub import Hub
from progressq.messages import ErrorBody, StartedTask, StartTaskRequest, TaskList, TaskView
from progressq.transport import Caller, Endpoints, Response, TransportSettings
from progressq.transport.http import forbidden_response
from progressq.transport.sse import EventStreamSession

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


async def _start_body(data: StartTaskRequest) -> StartTaskRequest:
    """Never called: it shows Litestar's OpenAPI the request body of ``POST /api/task/start``.

    The route reads its body itself (so malformed JSON, unknown fields and oversized bodies
    get progressq's documented answers, not Litestar's); Litestar's schema generator takes
    the body of a route from a ``data`` parameter of the route's dependencies as well.
    """
    return data


def route_handlers(hub: Hub, settings: TransportSettings | None = None) -> list[BaseRouteHandler]:
    """The route handlers of PROTOCOL.md for ``hub``. Register them and open the hub in the
    lifespan yourself, or use :class:`ProgressQPlugin`, which does both and more."""
    return _handlers(Endpoints(hub, settings))


def _handlers(endpoints: Endpoints) -> list[BaseRouteHandler]:
    api, info = endpoints.api, endpoints.info

    @get("/", name="progressq:index", tags=_TAGS)
    async def index() -> LitestarResponse[bytes]:
        """The name and version of the service and the routes it serves."""
        return _reply(await api.index())

    @get("/health", name="progressq:health", tags=_TAGS, responses={503: ResponseSpec(dict[str, str])})
    async def health() -> LitestarResponse[bytes]:
        """200 when the backend answers, else 503."""
        return _reply(await api.health())

    @get("/api/task/status", name="progressq:status", tags=_TAGS, responses={503: _UNAVAILABLE})
    async def status() -> LitestarResponse[bytes]:
        """Open connections, identities and queue counts of this process."""
        return _reply(await api.status())

    @post(
        "/api/task/start",
        name="progressq:start",
        tags=_TAGS,
        status_code=202,
        dependencies={"progressq_start_body": Provide(_start_body)},
        responses={
            202: ResponseSpec(StartedTask, description="the task was queued", generate_examples=False),
            400: _error("the body is not JSON"),
            403: _FORBIDDEN,
            413: _error("the body is over the size limit"),
            422: _error("a field is missing, of the wrong type, out of range or unknown"),
            503: _UNAVAILABLE,
        },
    )
    async def start(request: Request[Any, Any, Any]) -> LitestarResponse[bytes]:
        """Start a task for the caller (or for a new identity, returned as ``clientId``)."""
        return _reply(await endpoints.start(request, request.receive))

    @get(
        "/api/tasks",
        name="progressq:tasks",
        tags=_TAGS,
        responses={
            200: ResponseSpec(TaskList, description="the caller's tasks, newest first", generate_examples=False),
            403: _FORBIDDEN,
            503: _UNAVAILABLE,
        },
    )
    async def list_tasks(request: Request[Any, Any, Any]) -> LitestarResponse[bytes]:
        """The caller's tasks, newest first."""
        return _reply(await api.list_tasks(info(request)))

    @get(
        "/api/task/{task_id:str}",
        name="progressq:task",
        tags=_TAGS,
        responses={
            200: ResponseSpec(TaskView, description="the task", generate_examples=False),
            403: _FORBIDDEN,
            404: _NOT_FOUND,
            503: _UNAVAILABLE,
        },
    )
    async def get_task(request: Request[Any, Any, Any]) -> LitestarResponse[bytes]:
        """One of the caller's tasks."""
        return _reply(await api.get_task(info(request), request.path_params["task_id"]))

    @post(
        "/api/task/{task_id:str}/cancel",
        name="progressq:cancel",
        tags=_TAGS,
        status_code=200,
        responses={
            200: ResponseSpec(
                TaskView, description="the task was queued and is now cancelled", generate_examples=False
            ),
            202: ResponseSpec(TaskView, description="the task's worker was told to stop it", generate_examples=False),
            403: _FORBIDDEN,
            404: _NOT_FOUND,
            409: _error("the task has already finished"),
            503: _UNAVAILABLE,
        },
    )
    async def cancel_task(request: Request[Any, Any, Any]) -> LitestarResponse[bytes]:
        """Cancel one of the caller's tasks."""
        return _reply(await api.cancel_task(info(request), request.path_params["task_id"]))

    @websocket("/ws", name="progressq:ws")
    async def events(socket: WebSocket[Any, Any, Any]) -> None:
        await endpoints.serve(socket, socket.receive, socket.send, gone=(WebSocketDisconnect,))

    stream = EventStreamSession(endpoints.hub, endpoints.settings)

    @asgi("/api/events", name="progressq:events", copy_scope=True)
    async def event_stream(scope: Scope, receive: Receive, send: Send) -> None:
        await stream(scope, receive, send)  # type: ignore[arg-type]

    handlers: list[BaseRouteHandler] = [index] if endpoints.settings.include_index else []
    return [*handlers, health, status, start, list_tasks, get_task, cancel_task, events, event_stream]


class ProgressQPlugin(InitPluginProtocol):
    """A Litestar plugin (``InitPluginProtocol``) that serves progressq in an app.

    It adds the routes of PROTOCOL.md, opens the hub before the app's own lifespan managers
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
        hub_key: the dependency name of the hub.
        caller_key: the dependency name of the :class:`Caller` (HTTP handlers only).
    """

    def __init__(
        self,
        hub: Hub,
        settings: TransportSettings | None = None,
        *,
        hub_key: str = "hub",
        caller_key: str = "caller",
    ) -> None:
        self.hub = hub
        self.settings = settings or TransportSettings()
        self.hub_key = hub_key
        self.caller_key = caller_key

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        endpoints = Endpoints(self.hub, self.settings)

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


def create_app(hub: Hub, settings: TransportSettings | None = None, *, debug: bool = False) -> Litestar:
    """A new Litestar app serving only progressq (and its OpenAPI schema at ``/schema``)."""
    from progressq import __version__

    return Litestar(
        plugins=[ProgressQPlugin(hub, settings)],
        openapi_config=OpenAPIConfig(title="progressq", version=__version__),
        debug=debug,
    )
