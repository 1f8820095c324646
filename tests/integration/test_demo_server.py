"""The demo server as a user runs it: a real process, a client written from the wire contract."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps import free_port
from tests.integration.client import WsClient, terminal
from tests.waiting import PATIENCE

SERVER = Path(__file__).resolve().parents[2] / "examples" / "demo" / "server.py"

pytestmark = pytest.mark.anyio


def start_demo(*flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", str(port), "--log-level", "warning", *flags],
        env={**os.environ, "PROGRESSQ_SECRET": "demo-test-secret-0123456789"},
    )
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process, port
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, port
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the demo server did not start")


@pytest.fixture
def demo(framework: str) -> Iterator[int]:
    process, port = start_demo("--framework", framework)
    if process.poll() is not None:
        pytest.fail(f"the demo server exited with {process.returncode}")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def test_demo_task_completes_and_fail_fails(demo: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo}") as http:
        info = await http.get("/", headers={"accept": "application/json"})
        assert info.json()["name"] == "progressq"
        async with await WsClient.open(f"ws://127.0.0.1:{demo}/ws") as ws:
            assert (await ws.next())["type"] == "snapshot"
            headers = {"X-Socket-Id": ws.socket_id}
            ok = (await http.post("/api/task/start", json={"name": "ok", "duration": 1000}, headers=headers)).json()
            bad = (
                await http.post("/api/task/start", json={"name": "please fail", "duration": 1000}, headers=headers)
            ).json()
            finished: set[str] = set()

            def both_finished(message: dict[str, object]) -> bool:
                if terminal(ok["id"])(message) or terminal(bad["id"])(message):
                    finished.add(message["task"]["id"])  # type: ignore[index]
                return len(finished) == 2

            messages = await ws.until(both_finished)
    progress_of_ok = [m["task"]["progress"] for m in messages if m["task"]["id"] == ok["id"]]
    assert progress_of_ok[-1] == 100
    steps = sorted({p for p in progress_of_ok if 0 < p < 100})
    assert all(b - a <= 10 for a, b in zip([0.0, *steps], [*steps, 100.0], strict=True))  # at least every 10%
    failed = next(m["task"] for m in messages if m["task"]["id"] == bad["id"] and m["task"]["status"] == "failed")
    assert "please fail" in failed["error"]
    assert 40 <= failed["progress"] <= 60


def test_unknown_backend_is_refused_with_exit_code_2() -> None:
    process, _ = start_demo("--backend", "mysql://nowhere")
    assert process.wait(10) == 2


def test_redis_backend_runs_or_says_not_yet_supported() -> None:
    process, port = start_demo("--backend", "redis://127.0.0.1:6379/15")
    try:
        if process.poll() is not None:
            assert process.returncode == 2
        else:
            assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "healthy"
    finally:
        process.terminate()
        process.wait(10)
