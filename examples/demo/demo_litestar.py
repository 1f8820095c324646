"""The demo on Litestar: progressq as a plugin, beside the page, its assets and the demo's start route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from demo_task import START_PATH, StartDemoTask, demo_index, start_demo_task  # type: ignore[import-not-found,unused-ignore]
from litestar import Litestar, Request, Response, get, post
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.response import File
from litestar.static_files import create_static_files_router

from progressq import Hub
from progressq.litestar import ProgressQPlugin
from progressq.transport import HttpApi, TransportSettings, asgi_body, request_info


async def _documented_body(data: StartDemoTask) -> StartDemoTask:
    """Never called: shows the OpenAPI schema the body of the start route (which reads its body itself)."""
    return data


def build_litestar_app(hub: Hub, settings: TransportSettings, page_dir: Path) -> Litestar:
    api = HttpApi(hub, settings)

    @get("/", include_in_schema=False)
    async def index(request: Request[Any, Any, Any]) -> Response[bytes] | File:
        page = page_dir / "index.html"
        if "text/html" in request.headers.get("accept", "") and page.exists():
            return File(page, media_type="text/html", content_disposition_type="inline")
        info = await demo_index(hub)
        return Response(info.body, status_code=info.status, media_type=info.media_type)

    @post(START_PATH, status_code=202, dependencies={"demo_start_body": Provide(_documented_body)})
    async def start(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Start a demo task: ``{name, duration, clientId?}``."""
        answer = await start_demo_task(api, request_info(request), asgi_body(request.receive))
        return Response(answer.body, status_code=answer.status, headers=answer.headers, media_type=answer.media_type)

    handlers: list[BaseRouteHandler | Any] = [index, start]
    if page_dir.is_dir():
        handlers.append(create_static_files_router("/", directories=[page_dir], name="page"))
    return Litestar(route_handlers=handlers, plugins=[ProgressQPlugin(hub, settings)])
