"""Setting an adapter up: misconfiguration fails at startup, a missing extra names its install,
and the Litestar plugin's dependency names can be chosen."""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from typing import Any

import anyio
import httpx
import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from progressq import Hub, TaskContext
from progressq.errors import ConfigurationError
from progressq.litestar import ProgressQPlugin
from progressq.transport import TransportSettings
from tests.apps import build_app, build_library_app, make_hub, serve
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio


async def startup_answer(app: Any) -> dict[str, Any]:
    """Run an ASGI app's lifespan startup (then shutdown) and return its answer to the startup."""
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    answers: list[dict[str, Any]] = []
    started = anyio.Event()

    async def receive() -> dict[str, Any]:
        if len(inbox) == 1:
            await started.wait()
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)
        started.set()

    with anyio.fail_after(PATIENCE), contextlib.suppress(Exception):  # some re-raise a failed startup after answering
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return answers[0]


async def noop(ctx: TaskContext) -> None:
    pass


def app_with_its_own_health(framework: str, hub: Hub) -> Any:
    """An app that declares ``GET /health`` after mounting progressq at the root."""
    if framework == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from progressq.starlette import mount

        async def health(request: Any) -> PlainTextResponse:
            return PlainTextResponse("mine")

        app = Starlette()
        mount(app, hub)
        app.router.routes.append(Route("/health", health))  # added after mount: progressq's would win
        return app
    if framework == "litestar":

        @get("/health")
        async def health() -> str:
            return "mine"

        return Litestar(route_handlers=[health], plugins=[ProgressQPlugin(hub)])
    from fastapi import FastAPI

    from progressq.fastapi import create_router

    fast = FastAPI()
    fast.include_router(create_router(hub))

    @fast.get("/health")
    async def own_health() -> str:
        return "mine"

    return fast


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_an_app_route_progressq_would_shadow_fails_startup(framework: str) -> None:
    answer = await startup_answer(app_with_its_own_health(framework, make_hub()))
    assert answer["type"] == "lifespan.startup.failed"
    assert "GET /health" in answer["message"]
    assert "prefix" in answer["message"]  # the message names the fix


def test_litestar_refuses_an_app_route_progressq_would_shadow() -> None:
    with pytest.raises(Exception, match="/health"):  # Litestar itself refuses two handlers of one route
        app_with_its_own_health("litestar", make_hub())


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_under_a_prefix_the_apps_own_route_is_kept(framework: str) -> None:
    hub = make_hub()
    if framework == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from progressq.starlette import mount

        async def health(request: Any) -> PlainTextResponse:
            return PlainTextResponse("mine")

        app: Any = Starlette(routes=[Route("/health", health)])
        mount(app, hub, prefix="/pq")
    else:
        from fastapi import FastAPI
        from fastapi.responses import PlainTextResponse as FastText

        from progressq.fastapi import create_router

        app = FastAPI()
        app.include_router(create_router(hub, prefix="/pq"))

        @app.get("/health", response_class=FastText)
        async def own_health() -> str:
            return "mine"

    with serve(app, hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            assert (await http.get("/health")).text == "mine"
            assert (await http.get("/pq/health")).json()["status"] == "healthy"


async def test_a_sub_app_whose_lifespan_never_runs_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """``app.mount("/pq", create_app(hub))``: Starlette runs no lifespan of a mounted app. The
    hub never opens, and progressq says so instead of queueing tasks nobody runs."""
    from starlette.applications import Starlette

    from progressq.starlette import create_app

    hub = make_hub()
    app = Starlette()
    app.mount("/pq", create_app(hub))
    with serve(app, hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            health = await http.get("/pq/health")
            assert (health.status_code, health.json()["status"]) == (503, "unhealthy")
            started = await http.post("/pq/api/tasks/demo", json={"duration": 1000})
            assert started.status_code == 503
            assert started.json()["error"]["code"] == "hub_not_running"
            listed = await http.get("/pq/api/tasks")
            assert listed.json()["error"]["code"] == "hub_not_running"
        async with connect(f"ws://127.0.0.1:{server.port}/pq/ws") as socket:
            with pytest.raises(ConnectionClosed) as closed:
                await socket.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013  # try again later: not a session that never speaks
    assert any("progressq.starlette.mount" in record.getMessage() for record in caplog.records)
    assert not hub.is_running


@pytest.mark.parametrize("framework", ["starlette", "litestar", "fastapi"])
@pytest.mark.parametrize(
    ("options", "complaint"),
    [({"groups": ("tasks", "admin")}, "unknown route groups ['admin']"), ({"prefix": "/{x}"}, "a plain path")],
)
def test_bad_route_options_are_refused_at_once(framework: str, options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        build_library_app(framework, make_hub(), TransportSettings(), **options)


async def test_a_well_configured_app_starts(framework: str) -> None:
    answer = await startup_answer(build_app(framework, make_hub(), TransportSettings()))
    assert answer["type"] == "lifespan.startup.complete"


@pytest.mark.parametrize("framework", ["starlette", "litestar", "fastapi"])
def test_a_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch, framework: str) -> None:
    for name in [name for name in sys.modules if name.partition(".")[0] == framework]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, f"progressq.{framework}")
    with pytest.raises(ImportError, match=rf'pip install "progressq\[{framework}\]"'):
        importlib.import_module(f"progressq.{framework}")


def test_litestar_dependency_names_may_not_clash() -> None:
    with pytest.raises(ConfigurationError, match="'hub'"):
        Litestar(dependencies={"hub": Provide(lambda: "mine", sync_to_thread=False)}, plugins=[ProgressQPlugin(Hub())])


async def test_litestar_dependency_names_can_be_chosen() -> None:
    hub = make_hub()

    @get("/kinds")
    async def kinds(progress_hub: NamedDependency[Hub], hub: NamedDependency[str]) -> dict[str, Any]:
        return {"kinds": list(progress_hub.kinds), "hub": hub}

    app = Litestar(
        route_handlers=[kinds],
        dependencies={"hub": Provide(lambda: "the app's own", sync_to_thread=False)},
        plugins=[ProgressQPlugin(hub, hub_key="progress_hub", caller_key="progress_caller")],
    )
    with serve(app, hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            assert (await http.get("/kinds")).json() == {"kinds": ["demo"], "hub": "the app's own"}
