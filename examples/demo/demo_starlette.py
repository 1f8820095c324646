"""The demo on Starlette: progressq mounted beside the page, its assets and the demo's start route."""

from __future__ import annotations

from pathlib import Path

from demo_task import START_PATH, demo_index, start_demo_task  # type: ignore[import-not-found,unused-ignore]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from progressq import Hub
from progressq.starlette import mount
from progressq.transport import HttpApi, TransportSettings, request_info


def build_starlette_app(hub: Hub, settings: TransportSettings, page_dir: Path) -> Starlette:
    api = HttpApi(hub, settings)

    async def index(request: Request) -> Response:
        page = page_dir / "index.html"
        if "text/html" in request.headers.get("accept", "") and page.exists():
            return FileResponse(page, media_type="text/html")
        info = await demo_index(hub)
        return Response(info.body, info.status, media_type=info.media_type)

    async def start(request: Request) -> Response:
        answer = await start_demo_task(api, request_info(request), request.stream())
        return Response(answer.body, answer.status, answer.headers, media_type=answer.media_type)

    app = Starlette(routes=[Route("/", index, methods=["GET"]), Route(START_PATH, start, methods=["POST"])])
    mount(app, hub, settings)
    if page_dir.is_dir():
        app.router.routes.append(Mount("/", StaticFiles(directory=page_dir, html=True), name="page"))
    return app
