"""The HTTP half of the wire contract, framework-free.

Each method takes a :class:`RequestInfo` (and the body bytes) and returns a
:class:`Response`; adapters only translate. Bad input never raises: it becomes a 4xx with
``{"error": {"code", "message", "field"?}}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from progressq._logonce import LogOnce
from progressq._outage import backend_outage
from progressq.errors import (
    BackendUnavailable,
    ForbiddenIdentity,
    HubNotOpen,
    QueueFull,
    TaskAlreadyFinished,
    TaskNotFound,
    TooManyTasks,
    UnknownTaskKind,
    ValidationError,
)
from progressq.hub import Hub
from progressq.messages import ErrorBody, ErrorDetail, StartedTask, TaskList, encode
from progressq.transport._identity import IdentityResolver, origin_allowed
from progressq.transport._peer import PeerGone
from progressq.transport._routes import RouteSpec
from progressq.transport._settings import RequestInfo, TransportSettings

__all__ = ("BodyTooLarge", "HttpApi", "Response", "error_response", "forbidden_response", "read_body")

logger = logging.getLogger("progressq.transport")

_MAX_NAME_LENGTH = 200


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


def identity_required_response() -> Response:
    """The answer to a request naming no identity when ``require_identity`` is set."""
    return error_response(401, "identity_required", "this server serves only identified callers")


_NOT_RUNNING = LogOnce()


def hub_not_running_response() -> Response:
    """The answer of every route while the hub is not open (its lifespan never ran)."""
    if _NOT_RUNNING.first("hub"):
        logger.error(
            "progressq: a request arrived while the hub is not running: its lifespan never ran. "
            "An app mounted with app.mount(...) gets no lifespan from Starlette: use "
            "progressq.starlette.mount(app, hub, prefix=...) (or open the hub with `async with hub` "
            "in your own lifespan)"
        )
    return error_response(503, "hub_not_running", "the task hub is not running")


class IdentityRequired(Exception):
    """The request names no identity and ``require_identity`` is set (answered 401)."""


def _json(status: int, value: Any) -> Response:
    return Response(status, encode(value))


def _guarded(method: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Turn the errors every route shares into their documented answers."""

    async def run(api: HttpApi, *args: Any, **kwargs: Any) -> Response:
        if not api.hub.is_running:
            return hub_not_running_response()
        try:
            response = await method(api, *args, **kwargs)
        except IdentityRequired:
            return identity_required_response()
        except ForbiddenIdentity:
            return forbidden_response()
        except TaskNotFound:
            return error_response(404, "not_found", "no such task")
        except UnknownTaskKind:
            return error_response(404, "unknown_kind", "no task of this kind can be started here")
        except ValidationError as exc:
            return error_response(400 if exc.code == "malformed_json" else 422, exc.code, exc.message, exc.field)
        except HubNotOpen:
            return hub_not_running_response()
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
    """The HTTP routes of the wire contract, each a coroutine returning a :class:`Response`."""

    def __init__(self, hub: Hub, settings: TransportSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.identities = IdentityResolver(hub.identities, settings.identify)

    async def _owner(self, request: RequestInfo, presented: str | None = None) -> str:
        """The caller's identity: checked when presented, else the ``identify`` hook's, else
        a new one (or :class:`IdentityRequired` under ``require_identity``)."""
        if self.settings.require_identity:
            owner = await self.identities.caller(request, presented)
            if owner is None:
                raise IdentityRequired
            return owner
        return await self.identities.caller_or_new(request, presented)

    async def _known_owner(self, request: RequestInfo) -> str | None:
        owner = await self.identities.caller(request)
        if owner is None and self.settings.require_identity:
            raise IdentityRequired
        return owner

    async def index(self, routes: Sequence[RouteSpec] = ()) -> Response:
        """The name and version of the service and ``routes`` (those OpenAPI would list)."""
        from progressq import __version__

        endpoints = [{"method": r.method, "path": r.path, "description": r.summary} for r in routes]
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
    async def start_task(
        self,
        request: RequestInfo,
        kind: str,
        chunks: AsyncIterable[bytes],
        *,
        name: str | None = None,
        key: str | None = None,
    ) -> Response:
        """``POST /api/tasks/{kind}``: the body (read within ``max_body_bytes``, 413 beyond) is
        the kind's params as JSON, validated by the kind's type (422 naming the field).
        ``key`` (``?key=``): the caller's unfinished task with this unique key is answered
        instead of starting another."""
        if not origin_allowed(request, self.settings):
            return _origin_refused(request)
        task_kind = self.hub.task_kinds.get(kind)
        if task_kind is None:
            raise UnknownTaskKind(kind)
        try:
            body = await read_body(
                chunks, limit=self.settings.max_body_bytes, content_length=request.headers.get("content-length")
            )
        except BodyTooLarge:
            return error_response(413, "body_too_large", "the request body is too large")
        except PeerGone:  # the client left before its body ended; nobody reads this answer
            return error_response(400, "incomplete_body", "the request body ended early")
        if not body.strip():
            body = b"{}"
        try:
            msgspec.json.decode(body)  # malformed JSON is a 400, not a field of the params
            params = task_kind.decode_params(body)
        except msgspec.DecodeError:
            return error_response(400, "malformed_json", "the body is not valid JSON")
        except RecursionError:  # valid JSON, nested deeper than any params need
            return error_response(400, "malformed_json", "the body is nested too deeply")
        return await self.start_for(request, kind, params, name=name, key=key)

    @_guarded
    async def start_for(
        self,
        request: RequestInfo,
        kind: str,
        params: Any = None,
        *,
        name: str | None = None,
        client_id: str | None = None,
        key: str | None = None,
    ) -> Response:
        """Start a task of ``kind`` for the caller of ``request``, answered like ``POST /api/tasks/{kind}``.

        For an app's own start route: checks the origin, names the caller (``client_id`` is an
        id the caller presents in its body, checked like the headers), submits ``params``
        (validated by the kind's type) and answers 202 with the task and the caller's
        ``clientId``, or the documented error. With a unique ``key``, the caller's unfinished
        task with that key is answered (202, the same body) instead of starting another.
        """
        if not origin_allowed(request, self.settings):
            return _origin_refused(request)
        if name is not None:
            name = name.strip()
            if not 1 <= len(name) <= _MAX_NAME_LENGTH:
                return error_response(
                    422, "invalid_field", f"name must have 1 to {_MAX_NAME_LENGTH} characters", "name"
                )
        if key is not None and not 1 <= len(key) <= _MAX_NAME_LENGTH:
            return error_response(422, "invalid_field", f"key must have 1 to {_MAX_NAME_LENGTH} characters", "key")
        if kind not in self.hub.task_kinds:
            raise UnknownTaskKind(kind)
        owner = await self._owner(request, client_id)
        record = await self.hub.submit(kind, owner=owner, name=name, params=params, key=key)
        view = record.view()
        started = StartedTask(**{f: getattr(view, f) for f in view.__struct_fields__}, client_id=owner)
        return _json(202, started)

    @_guarded
    async def list_tasks(self, request: RequestInfo) -> Response:
        owner = await self._known_owner(request)
        records = [] if owner is None else await self.hub.list(owner=owner)
        return _json(200, TaskList(client_id=owner, tasks=[r.view() for r in records]))

    @_guarded
    async def get_task(self, request: RequestInfo, task_id: str) -> Response:
        owner = await self._known_owner(request)
        if owner is None:
            raise TaskNotFound(task_id)
        return _json(200, (await self.hub.get(task_id, owner=owner)).view())

    @_guarded
    async def cancel_task(self, request: RequestInfo, task_id: str) -> Response:
        if not origin_allowed(request, self.settings):
            return _origin_refused(request)
        owner = await self._known_owner(request)
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
