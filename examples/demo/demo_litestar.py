"""The demo on Litestar: progressq as a plugin, beside the page and its assets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.handlers import BaseRouteHandler
from litestar.response import File
from litestar.static_files import create_static_files_router

from progressq import Hub
from progressq.litestar import ProgressQPlugin
from progressq.transport import HttpApi, TransportSettings


def build_litestar_app(hub: Hub, settings: TransportSettings, page_dir: Path) -> Litestar:
    api = HttpApi(hub, settings)

    @get("/", include_in_schema=False)
    async def index(request: Request[Any, Any, Any]) -> Response[bytes] | File:
        page = page_dir / "index.html"
        if "text/html" in request.headers.get("accept", "") and page.exists():
            return File(page, media_type="text/html", content_disposition_type="inline")
        info = await api.index()
        return Response(info.body, status_code=info.status, media_type=info.media_type)

    handlers: list[BaseRouteHandler | Any] = [index]
    if page_dir.is_dir():
        handlers.append(create_static_files_router("/", directories=[page_dir], name="page"))
    return Litestar(route_handlers=handlers, plugins=[ProgressQPlugin(hub, settings)])
