"""Test apps: a hub with fast, controllable tasks, mounted by each adapter, served for real."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import uvicorn

from progressq import Hub, MemoryBackend, TaskContext
from progressq.transport import TransportSettings

DEMO_DIR = Path(__file__).resolve().parents[1] / "examples" / "demo"
if str(DEMO_DIR) not in sys.path:
    sys.path.append(str(DEMO_DIR))  # the demo's modules: its task, its start route, its apps

from demo_task import DemoParams  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

TIME_SCALE = 0.05  # a 1000 ms demo task runs 50 ms here
SECRET = "test-secret-0123456789abcdef"
FRAMEWORKS = ("starlette", "litestar")


def make_hub(**hub_options: Any) -> Hub:
    backend = hub_options.pop("backend", None) or MemoryBackend(history_size=hub_options.pop("history_size", 1000))
    progress_interval = hub_options.pop("progress_interval", 0.01)
    secret = hub_options.pop("secret", SECRET)  # None: the environment's PROGRESSQ_SECRET
    hub = Hub(backend, secret=secret, progress_interval=progress_interval, shutdown_grace=1.0, **hub_options)

    @hub.task("demo", timeout=30)
    async def demo(ctx: TaskContext, params: DemoParams) -> dict[str, int]:
        """Like the demo's task, faster; ``fail`` fails halfway, ``block`` waits to be cancelled,
        ``flood`` reports as fast as it can."""
        if "flood" in ctx.name:
            for report in range(1, 2001):
                await ctx.report(report / 20, f"report {report}")
                await anyio.lowlevel.checkpoint()
            return {"steps": 2000}
        steps = 10
        for step in range(1, steps + 1):
            if "block" in ctx.name and step == 2:
                await anyio.sleep_forever()
            await anyio.sleep(params.duration / 1000 * TIME_SCALE / steps)
            if "fail" in ctx.name and step == steps // 2:
                raise RuntimeError(f"{ctx.name} failed on purpose")
            await ctx.report(step * 100 / steps, f"step {step}")
        return {"steps": steps}

    return hub


def build_app(framework: str, hub: Hub, settings: TransportSettings) -> Any:
    """The demo's app (progressq, plus the demo's ``POST /api/task/start`` and ``GET /``) on ``hub``."""
    no_page = DEMO_DIR / "no-page"
    if framework == "starlette":
        from demo_starlette import build_starlette_app  # type: ignore[import-not-found,unused-ignore]

        return build_starlette_app(hub, settings, no_page)
    if framework == "litestar":
        from demo_litestar import build_litestar_app  # type: ignore[import-not-found,unused-ignore]

        return build_litestar_app(hub, settings, no_page)
    raise ValueError(framework)


def build_library_app(framework: str, hub: Hub, settings: TransportSettings, **options: Any) -> Any:
    """progressq alone: the adapter's ``create_app`` (``fastapi``: an app including its router)."""
    if framework == "starlette":
        from progressq.starlette import create_app

        return create_app(hub, settings, **options)
    if framework == "litestar":
        from progressq.litestar import create_app as create_litestar_app  # type: ignore[import-not-found,unused-ignore]

        return create_litestar_app(hub, settings, **options)
    if framework == "fastapi":
        from fastapi import FastAPI

        from progressq.fastapi import create_router

        app = FastAPI()
        app.include_router(create_router(hub, settings, **options))
        return app
    raise ValueError(framework)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningServer:
    def __init__(self, hub: Hub, port: int) -> None:
        self.hub = hub
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"


@contextlib.contextmanager
def serve(app: Any, hub: Hub, **uvicorn_options: Any) -> Iterator[RunningServer]:
    """Serve ``app`` with a real uvicorn on a free port, in a thread."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws_per_message_deflate=False, **uvicorn_options
    )
    server = uvicorn.Server(config)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # startup failures end the thread with SystemExit
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server did not start: {failures!r}")
        time.sleep(0.01)
    try:
        yield RunningServer(hub, port)
    finally:
        server.should_exit = True
        thread.join(10)


ServerFactory = Callable[..., contextlib.AbstractContextManager[RunningServer]]
