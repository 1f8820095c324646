"""The HTTP half of the wire contract, framework-free.

Each method takes a :class:`RequestInfo` (and the body bytes) and returns a
:class:`Response`; adapters only translate. Bad input never raises: it becomes a 4xx with
``{"error": {"code", "message", "field"?}}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from progressq._outage import backend_outage
from progressq.errors import (
    BackendUnavailable,
    ConfigurationError,
    ForbiddenIdentity,
    QueueFull,
    TaskAlreadyFinished,
    TaskNotFound,
    TooManyTasks,
)
from progressq.hub import Hub
from progressq.messages import ErrorBody, ErrorDetail, StartedTask, StartTaskRequest, TaskList, encode
from progressq.transport._connection import PeerGone
from progressq.transport._identity import IdentityResolver, origin_allowed
from progressq.transport._settings import RequestInfo, TransportSettings

__all__ = ("ENDPOINTS", "BodyTooLarge", "HttpApi", "Response", "error_response", "forbidden_response", "read_body")

logger = logging.getLogger("progressq.transport")

ENDPOINTS: tuple[tuple[str, str, str], ...] = (
    ("GET", "/", "this description"),
    ("GET", "/health", "200 when the backend answers, else 503"),
    ("GET", "/api/task/status", "connections, clients and queue counts"),
    ("POST", "/api/task/start", "start a task: {name, duration, clientId?}"),
    ("GET", "/api/tasks", "the caller's tasks, newest first"),
    ("GET", "/api/task/{id}", "one of the caller's tasks"),
    ("POST", "/api/task/{id}/cancel", "cancel one of the caller's tasks"),
    ("WS", "/ws", "live events of the caller's tasks"),
)

_MAX_NAME_LENGTH = 200
_FIELD_IN_ERROR = re.compile(r"(?:at `\$\.(\w+)|field `(\w+)`)")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


class BodyTooLarge(Exception):
    """The request body is over the configured limit (answered 413)."""


async def read_body(chunks: AsyncIterable[bytes], *, limit: int, content_length: str | None) -> bytes:
    """Read a request body, refusing it as soon as it is known to exceed ``limit``."""
    if (
        content_length is not None
        and content_length.isascii()
        and content_length.isdigit()
        and int(content_length) > limit
    ):
        raise BodyTooLarge
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """The documented error answer: ``{"error": {"code", "message", "field"?}}``."""
    detail = ErrorDetail(code=code, message=message, field=field if field is not None else msgspec.UNSET)
    return Response(status, encode(ErrorBody(detail)), headers or {})


def forbidden_response() -> Response:
    """The answer to a request presenting an id this server did not issue (or vouch for)."""
    return error_response(403, "forbidden_identity", "this client id was not issued by this server")


def _json(status: int, value: Any) -> Response:
    return Response(status, encode(value))


def _guarded(method: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Turn the errors every route shares into their documented answers."""

    async def run(*args: Any, **kwargs: Any) -> Response:
        try:
            response = await method(*args, **kwargs)
        except ForbiddenIdentity:
            return forbidden_response()
        except TaskNotFound:
            return error_response(404, "not_found", "no such task")
        except QueueFull as exc:
            return error_response(
                503,
                "queue_full",
                "the task queue is full; try again later",
                headers={"Retry-After": str(max(1, round(exc.retry_after)))},
            )
        except TooManyTasks as exc:
            return error_response(
                429,
                "too_many_tasks",
                "too many unfinished tasks; wait for one to finish",
                headers={"Retry-After": str(max(1, round(exc.retry_after)))},
            )
        except (BackendUnavailable, OSError) as exc:
            backend_outage.failed(f"a request ({method.__name__})", exc)  # logged once per outage
            return error_response(503, "backend_unavailable", "the service is temporarily unavailable")
        except Exception:  # the details go to the log, never to the client
            logger.exception("a request failed")
            return error_response(500, "internal_error", "the server could not handle this request")
        if response.status < 500:  # not a nested guarded route's 503
            backend_outage.answered()
        return response

    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


class HttpApi:
    """The routes of PROTOCOL.md, each a coroutine returning a :class:`Response`."""

    def __init__(self, hub: Hub, settings: TransportSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.identities = IdentityResolver(hub.identities, settings.identify)

    def start_kind(self) -> str:
        """The task kind ``POST /api/task/start`` submits.

        Raises:
            ConfigurationError: none is configured and the hub has not exactly one.
        """
        if self.settings.start_task is not None:
            if self.settings.start_task not in self.hub.kinds:
                raise ConfigurationError(f"start_task {self.settings.start_task!r} has no registered handler")
            return self.settings.start_task
        if len(self.hub.kinds) != 1:
            raise ConfigurationError(
                "set TransportSettings(start_task=...) to the kind POST /api/task/start submits "
                f"(registered kinds: {list(self.hub.kinds)})"
            )
        return self.hub.kinds[0]

    async def index(self) -> Response:
        from progressq import __version__

        endpoints = [{"method": m, "path": p, "description": d} for m, p, d in ENDPOINTS]
        return _json(200, {"name": "progressq", "version": __version__, "endpoints": endpoints})

    async def health(self) -> Response:
        if await self.hub.healthy():
            return _json(200, {"status": "healthy", "backend": type(self.hub.backend).__name__})
        return _json(503, {"status": "unhealthy", "backend": type(self.hub.backend).__name__})

    @_guarded
    async def status(self) -> Response:
        registry = self.hub.registry.statistics()
        queue = await self.hub.queue.statistics()
        return _json(
            200,
            {
                "connections": registry.connections,
                "clients": registry.clients,
                "queue": {"queued": queue.queued, "running": queue.running},
                "workers": self.hub.concurrency,
            },
        )

    @_guarded
    async def start(self, request: RequestInfo, body: bytes) -> Response:
        if not origin_allowed(request, self.settings):
            return _origin_refused(request)
        try:
            start = msgspec.json.decode(body, type=StartTaskRequest)
        except msgspec.ValidationError as exc:
            return error_response(422, "invalid_field", str(exc), _field_of(exc))
        except msgspec.DecodeError:
            return error_response(400, "malformed_json", "the body is not valid JSON")
        name = start.name.strip()
        if not 1 <= len(name) <= _MAX_NAME_LENGTH:
            return error_response(422, "invalid_field", f"name must have 1 to {_MAX_NAME_LENGTH} characters", "name")
        owner = await self.identities.caller_or_new(request, start.client_id)
        record = await self.hub.submit(self.start_kind(), owner=owner, name=name, payload={"duration": start.duration})
        view = record.view()
        started = StartedTask(**{f: getattr(view, f) for f in view.__struct_fields__}, client_id=owner)
        return _json(202, started)

    @_guarded
    async def start_streamed(self, request: RequestInfo, chunks: AsyncIterable[bytes]) -> Response:
        """:meth:`start`, reading the body from ``chunks`` within ``max_body_bytes`` (413 beyond)."""
        try:
            body = await read_body(
                chunks, limit=self.settings.max_body_bytes, content_length=request.headers.get("content-length")
            )
        except BodyTooLarge:
            return error_response(413, "body_too_large", "the request body is too large")
        except PeerGone:  # the client left before its body ended; nobody reads this answer
            return error_response(400, "incomplete_body", "the request body ended early")
        return await self.start(request, body)

    @_guarded
    async def list_tasks(self, request: RequestInfo) -> Response:
        owner = await self.identities.caller(request)
        records = [] if owner is None else await self.hub.list(owner=owner)
        return _json(200, TaskList(client_id=owner, tasks=[r.view() for r in records]))

    @_guarded
    async def get_task(self, request: RequestInfo, task_id: str) -> Response:
        owner = await self.identities.caller(request)
        if owner is None:
            raise TaskNotFound(task_id)
        return _json(200, (await self.hub.get(task_id, owner=owner)).view())

    @_guarded
    async def cancel_task(self, request: RequestInfo, task_id: str) -> Response:
        if not origin_allowed(request, self.settings):
            return _origin_refused(request)
        owner = await self.identities.caller(request)
        if owner is None:
            raise TaskNotFound(task_id)
        try:
            record = await self.hub.cancel(task_id, owner=owner)
        except TaskAlreadyFinished:
            return error_response(409, "already_finished", "the task has already finished")
        # 200: cancelled now (it was queued); 202: its worker was told and will stop it.
        return _json(200 if record.finished else 202, record.view())


def _origin_refused(request: RequestInfo) -> Response:
    """A state-changing request from a page of another site (cross-site request forgery)."""
    logger.info("refused a request from origin %r", request.headers.get("origin"))
    return error_response(403, "origin_not_allowed", "this origin may not start or cancel tasks")


def _field_of(exc: msgspec.ValidationError) -> str | None:
    match = _FIELD_IN_ERROR.search(str(exc))
    if match is None:
        return None
    return match.group(1) or match.group(2)
