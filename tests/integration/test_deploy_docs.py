"""The deployment how-tos (Redis, PostgreSQL), run as written: each page's two modules laid out
as ``myapp/``, a web process under uvicorn and a ``progressq worker`` process, both real,
sharing one Redis or one PostgreSQL database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.integration.client import WsClient, start_kind, terminal
from tests.postgres_support import database_url, schema_of_its_own
from tests.redis_cluster_support import SharedCluster, delete_cluster_prefix
from tests.redis_support import REDIS_URL, free_port, new_prefix, prefixed
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

HOWTO = Path(__file__).resolve().parents[2] / "docs" / "how-to"
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis_cluster),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    """Which page: deploy-redis.md (on one Redis, and with a Redis Cluster URL, as its section
    on Redis Cluster says) or deploy-postgres.md."""
    return str(request.param)


@pytest.fixture
def place(kind: str, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment the page's modules read: where the backend is, in a place of the test's own."""
    if kind == "redis":
        with prefixed("deploy-docs") as prefix:
            yield {"REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix}
    elif kind == "redis-cluster":
        cluster: SharedCluster = request.getfixturevalue("redis_cluster")
        prefix = new_prefix("deploy-docs")
        try:
            yield {"REDIS_URL": cluster.url, "REDIS_PREFIX": prefix}
        finally:
            delete_cluster_prefix(cluster.url, prefix)
    else:
        with schema_of_its_own("deploy_docs") as schema:
            yield {"DATABASE_URL": database_url(), "PROGRESSQ_SCHEMA": schema}


@pytest.fixture
def myapp(tmp_path: Path, kind: str) -> Path:
    """The page's blocks as the files their first lines name (``# myapp/tasks.py``)."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    page = "redis" if kind == "redis-cluster" else kind
    for block in _PYTHON_BLOCK.findall((HOWTO / f"deploy-{page}.md").read_text()):
        path = block.splitlines()[0].removeprefix("# ").strip()
        assert path.startswith("myapp/"), path
        (tmp_path / path).write_text(block)
    return tmp_path


@pytest.fixture
def processes(myapp: Path, place: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The page's processes, ended before its place (a Redis prefix, a schema) is deleted."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


async def test_a_web_process_and_a_worker_process_run_a_task_as_the_page_says(
    myapp: Path, processes: list[subprocess.Popen[bytes]], place: dict[str, str]
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(myapp), *sys.path]),
        **place,
        "PROGRESSQ_SECRET": "deploy-docs-secret-0123456789abcdef",
    }

    def start(*command: str, log: str) -> None:
        with (myapp / log).open("wb") as out:
            processes.append(subprocess.Popen(command, cwd=myapp, env=env, stdout=out, stderr=subprocess.STDOUT))

    start(sys.executable, "-m", "uvicorn", "myapp.web:app", "--port", str(port), log="web.log")
    start(sys.executable, "-m", "progressq", "worker", "myapp.tasks:hub", "--concurrency", "2", log="worker.log")
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=PATIENCE, base_url=base) as http:
        await _wait_healthy(http, myapp)
        async with await WsClient.open(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.next()  # the snapshot
            started = await start_kind(http, "export", {"table": "orders"}, **{"X-Client-Id": ws.client_id})
            assert started.status_code == 202, started.text
            final = (await ws.until(terminal(started.json()["id"])))[-1]["task"]
            refused = await start_kind(http, "export", {"table": 5}, **{"X-Client-Id": ws.client_id})
    assert (final["status"], final["result"], final["message"]) == ("completed", {"rows": 1000}, "1000 rows of orders")
    assert (refused.status_code, refused.json()["error"]["field"]) == (422, "table")
    worker_log = (myapp / "worker.log").read_text()
    assert "progressq worker myapp.tasks:hub" in worker_log
    assert "task kinds: export" in worker_log


async def _wait_healthy(http: httpx.AsyncClient, myapp: Path) -> None:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            if (await http.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await anyio.sleep(0.1)
    raise AssertionError(f"the web process did not answer:\n{(myapp / 'web.log').read_text()}")
