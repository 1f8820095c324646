"""The demo on Starlette: progressq mounted beside the page and its assets."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from progressq import Hub
from progressq.starlette import mount
from progressq.transport import HttpApi, TransportSettings


def build_starlette_app(hub: Hub, settings: TransportSettings, page_dir: Path) -> Starlette:
    api = HttpApi(hub, settings)

    async def index(request: Request) -> Response:
        page = page_dir / "index.html"
        if "text/html" in request.headers.get("accept", "") and page.exists():
            return FileResponse(page, media_type="text/html")
        info = await api.index()
        return Response(info.body, info.status, media_type=info.media_type)

    app = Starlette(routes=[Route("/", index, methods=["GET"])])
    mount(app, hub, settings)
    if page_dir.is_dir():
        app.router.routes.append(Mount("/", StaticFiles(directory=page_dir, html=True), name="page"))
    return app
