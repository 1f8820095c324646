"""Setting an adapter up: misconfiguration fails at startup, a missing extra names its install,
and the Litestar plugin's dependency names can be chosen."""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any

import anyio
import httpx
import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide

from progressq import Hub, TaskContext
from progressq.errors import ConfigurationError
from progressq.litestar import ProgressQPlugin
from progressq.transport import TransportSettings
from tests.apps import build_app, make_hub, serve

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

    with anyio.fail_after(10), contextlib.suppress(Exception):  # some re-raise a failed startup after answering
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return answers[0]


async def noop(ctx: TaskContext) -> None:
    pass


@pytest.mark.parametrize(
    ("kinds", "start_task", "complaint"),
    [
        (("a", "b"), None, "set TransportSettings(start_task=...)"),
        (("a",), "b", "start_task 'b' has no registered handler"),
    ],
)
async def test_a_start_route_without_a_kind_fails_at_startup(
    framework: str, kinds: tuple[str, ...], start_task: str | None, complaint: str
) -> None:
    hub = Hub()
    for kind in kinds:
        hub.task(kind)(noop)
    answer = await startup_answer(build_app(framework, hub, TransportSettings(start_task=start_task)))
    assert answer["type"] == "lifespan.startup.failed"
    assert complaint in answer["message"]


async def test_a_well_configured_app_starts(framework: str) -> None:
    answer = await startup_answer(build_app(framework, make_hub(), TransportSettings()))
    assert answer["type"] == "lifespan.startup.complete"


@pytest.mark.parametrize("framework", ["starlette", "litestar"])
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
        async with httpx.AsyncClient(base_url=server.http) as http:
            assert (await http.get("/kinds")).json() == {"kinds": ["demo"], "hub": "the app's own"}
