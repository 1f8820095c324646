"""The demo server as a user runs it: a real process, a client written from the wire contract."""

from __future__ import annotations

import contextlib
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
from tests.postgres_support import database_url
from tests.redis_cluster_support import SharedCluster, local_cluster
from tests.redis_support import require_redis
from tests.waiting import PATIENCE

SERVER = Path(__file__).resolve().parents[2] / "examples" / "demo" / "server.py"

pytestmark = pytest.mark.anyio


def start_demo(*flags: str, log: Path | None = None, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with contextlib.ExitStack() as files:
        process = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(port), "--log-level", "warning", *flags],
            env={**os.environ, "PROGRESSQ_SECRET": "demo-test-secret-0123456789", **env},
            stderr=files.enter_context(log.open("wb")) if log is not None else None,
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


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis-cluster", marks=pytest.mark.redis_cluster),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def demo_backend(request: pytest.FixtureRequest) -> str:
    """The demo's ``--backend``: memory, a Redis Cluster URL (the test run's cluster) and a
    PostgreSQL URL (the test session's database)."""
    if request.param == "redis-cluster":
        cluster: SharedCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return "memory" if request.param == "memory" else database_url()


@pytest.fixture
def demo(framework: str, demo_backend: str) -> Iterator[int]:
    process, port = start_demo("--framework", framework, "--backend", demo_backend)
    if process.poll() is not None:
        pytest.fail(f"the demo server exited with {process.returncode}")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def test_demo_task_completes_and_fail_fails(demo: int) -> None:
    async with httpx.AsyncClient(timeout=PATIENCE, base_url=f"http://127.0.0.1:{demo}") as http:
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


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis_cluster),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
async def test_web_process_and_worker_share_the_backend_variable(tmp_path: Path, kind: str) -> None:
    """As the README runs them: one PROGRESSQ_BACKEND for both; each names it in its log."""
    with contextlib.ExitStack() as stack:
        if kind == "redis":
            require_redis()
            url, backend_class = "redis://127.0.0.1:6379/15", "RedisBackend"
        elif kind == "redis-cluster":  # a cluster of its own: the demo keeps its keys under one prefix
            url, backend_class = stack.enter_context(local_cluster(replicas=0)).url, "RedisBackend"
        else:
            url, backend_class = database_url(), "PostgresBackend"
        await _web_and_worker(tmp_path, url, backend_class)


async def _web_and_worker(tmp_path: Path, url: str, backend_class: str) -> None:
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    web, port = start_demo("--workers-in-process", "0", log=web_log, PROGRESSQ_BACKEND=url)
    worker: subprocess.Popen[bytes] | None = None
    try:
        assert web.poll() is None, web_log.read_text()
        assert f"PROGRESSQ_BACKEND={url} progressq worker demo_worker:hub" in web_log.read_text()
        environment = {k: v for k, v in os.environ.items() if k != "PROGRESSQ_SECRET"}
        with worker_log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "progressq", "worker", "demo_worker:hub", "--concurrency", "2"],
                cwd=SERVER.parent,
                env={**environment, "PROGRESSQ_BACKEND": url},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=PATIENCE) as http,
            await WsClient.open(f"ws://127.0.0.1:{port}/ws") as ws,
        ):
            await ws.next()
            started = await http.post(
                "/api/task/start", json={"name": "on a worker", "duration": 1000}, headers={"X-Client-Id": ws.client_id}
            )
            assert started.status_code == 202, started.text
            final = (await ws.until(terminal(started.json()["id"])))[-1]["task"]
            assert final["status"] == "completed"
        text = worker_log.read_text()
        assert f"{backend_class} {url}" in text
        assert "secret" not in text, "a worker that only runs tasks needs no identity secret"
    finally:
        for process in (web, worker):
            if process is not None:
                process.terminate()
                process.wait(PATIENCE)


@pytest.mark.parametrize(
    ("module", "url", "extra"),
    [
        ("redis", "redis://127.0.0.1:6379/15", "redis"),
        ("psycopg", "postgresql://postgres@127.0.0.1:5432/postgres", "postgres"),
    ],
)
def test_a_missing_extra_is_named_not_called_unsupported(tmp_path: Path, module: str, url: str, extra: str) -> None:
    """Without its driver installed the server says what to install (simulated: the driver hidden)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / f"{module}.py").write_text(f"raise ImportError('No module named {module}')\n")
    log = tmp_path / "web.log"
    process, _ = start_demo(
        "--backend",
        url,
        log=log,
        PYTHONPATH=f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    assert process.wait(PATIENCE) == 2
    text = log.read_text()
    assert "not yet supported" not in text
    assert f'pip install "progressq[{extra}]"' in text


async def test_one_identity_s_backlog_of_long_tasks_does_not_delay_another_s_short_task() -> None:
    """The demo as it ships (8 workers, default settings): A queues 100 tasks of 30 s, then B
    starts one of 1 s. B's task completes while A's first tasks are still running: it did not
    wait behind A's backlog for a slot (an ordering, not a timing)."""
    process, port = start_demo()
    assert process.poll() is None, "the demo server did not start"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=PATIENCE) as http:
            first = await http.post("/api/task/start", json={"name": "long 0", "duration": 30000})
            assert first.status_code == 202, first.text
            hog = {"X-Client-Id": first.json()["clientId"]}
            for n in range(1, 100):
                started = await http.post("/api/task/start", json={"name": f"long {n}", "duration": 30000}, headers=hog)
                assert started.status_code == 202, started.text
            async with await WsClient.open(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.next()  # the snapshot
                started = await http.post(
                    "/api/task/start", json={"name": "short", "duration": 1000}, headers={"X-Client-Id": ws.client_id}
                )
                assert started.status_code == 202, started.text
                short = started.json()["id"]
                ended = (await ws.until(terminal(short), timeout=PATIENCE * 2))[-1]["task"]
            backlog = (await http.get("/api/tasks", headers=hog)).json()["tasks"]
        assert ended["status"] == "completed"
        statuses = [task["status"] for task in backlog]
        assert "completed" not in statuses  # none of A's 30 s tasks had ended: B did not wait for one
        assert 1 <= statuses.count("running") <= 4  # A's first tasks ran meanwhile, under its cap (half of 8)
        assert statuses.count("queued") >= 96
    finally:
        process.kill()  # its tasks are in memory: nothing to hand back
        process.wait(10)
