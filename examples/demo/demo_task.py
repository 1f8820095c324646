"""The demo's own task kind and its start route, built on progressq's public API only.

``POST /api/task/start {name, duration, clientId?}`` starts a ``demo`` task that runs for
``duration`` milliseconds and reports every 5%; a task whose name holds the word "fail"
fails halfway. The library knows nothing of this: it is an app's own route.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable
from typing import Annotated, Any

import anyio
import msgspec

from progressq import Hub, TaskContext
from progressq.transport import BodyTooLarge, HttpApi, RequestInfo, Response, error_response, read_body, route_table

__all__ = ("DemoParams", "StartDemoTask", "demo_index", "register_demo_task", "start_demo_task")

START_PATH = "/api/task/start"
_LIBRARY_GROUPS = ("tasks", "live", "ops")
_FAIL_WORD = re.compile(r"\bfail\b", re.IGNORECASE)
_STEPS = 20  # a progress report every 5%
_FIELD = re.compile(r"at `\$\.(\w+)|field `(\w+)`")


class StartDemoTask(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /api/task/start``. ``name`` is trimmed and checked by progressq."""

    name: str
    duration: Annotated[int, msgspec.Meta(ge=1000, le=30000)]
    client_id: str | None = None


class DemoParams(msgspec.Struct, forbid_unknown_fields=True):
    """The params of a ``demo`` task."""

    duration: Annotated[int, msgspec.Meta(ge=1000, le=30000)]


class DemoTaskFailed(Exception):
    """What a task named with the word "fail" raises, halfway through."""


def register_demo_task(hub: Hub) -> None:
    @hub.task("demo", timeout=60)
    async def demo(ctx: TaskContext, params: DemoParams) -> dict[str, Any]:
        """Run for ``duration`` milliseconds, reporting every 5%."""
        for step in range(1, _STEPS + 1):
            await anyio.sleep(params.duration / 1000 / _STEPS)
            if _FAIL_WORD.search(ctx.name) and step == _STEPS // 2:
                raise DemoTaskFailed(f"'{ctx.name}' failed on purpose at {step * 100 // _STEPS}%")
            await ctx.report(step * 100 / _STEPS, f"step {step} of {_STEPS}")
        return {"durationMs": params.duration}


async def start_demo_task(api: HttpApi, request: RequestInfo, chunks: AsyncIterable[bytes]) -> Response:
    """``POST /api/task/start``: read and check the demo's body, then start a ``demo`` task
    for the caller (``clientId`` in the body, else the identity headers, else a new one)."""
    try:
        body = await read_body(
            chunks, limit=api.settings.max_body_bytes, content_length=request.headers.get("content-length")
        )
    except BodyTooLarge:
        return error_response(413, "body_too_large", "the request body is too large")
    try:
        start = msgspec.json.decode(body, type=StartDemoTask)
    except msgspec.ValidationError as exc:
        match = _FIELD.search(str(exc))
        return error_response(422, "invalid_field", str(exc), match and (match.group(1) or match.group(2)))
    except msgspec.DecodeError:
        return error_response(400, "malformed_json", "the body is not valid JSON")
    params = DemoParams(duration=start.duration)
    return await api.start_for(request, "demo", params, name=start.name, client_id=start.client_id)


async def demo_index(hub: Hub) -> Response:
    """``GET /`` for JSON clients: progressq's routes and the demo's own."""
    from progressq import __version__

    routes = [{"method": "GET", "path": "/", "description": "this description (the page, for a browser)"}]
    routes += [
        {"method": r.method, "path": r.path, "description": r.summary} for r in route_table(hub, groups=_LIBRARY_GROUPS)
    ]
    routes.append(
        {"method": "POST", "path": START_PATH, "description": "start a demo task: {name, duration, clientId?}"}
    )
    return Response(200, msgspec.json.encode({"name": "progressq", "version": __version__, "endpoints": routes}))
