"""Two web processes and two worker processes on one Redis, or on one PostgreSQL database: every
client gets all of its own events, whichever process it is connected to and whichever worker
runs its tasks, and none of another's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.apps import free_port
from tests.integration.client import WsClient, terminal
from tests.integration.test_tasks import assert_gapless, assert_progress_never_decreases, task_events
from tests.postgres_support import database_url, schema_of_its_own
from tests.redis_support import REDIS_URL, prefixed
from tests.test_redis_workers import Worker
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class WebProcess:
    def __init__(self, prefix: str, log: Path, url: str = REDIS_URL) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PQ_TEST_REDIS_URL": url, "PQ_TEST_PREFIX": prefix}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tests.web_app:app",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"web process did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[WebProcess]]:
    if request.param == "redis":
        url, place = REDIS_URL, prefixed("cluster")
    else:
        url, place = database_url(), schema_of_its_own("cluster")
    with place as prefix:
        webs: list[WebProcess] = []
        workers: list[Worker] = []
        try:
            for n in range(2):
                workers.append(Worker(prefix, tmp_path / f"worker-{n}.log", concurrency=4, grace=5.0, url=url))
            for worker in workers:
                worker.wait_ready()
            webs = [WebProcess(prefix, tmp_path / f"web-{n}.log", url) for n in range(2)]
            yield webs
        finally:
            for web in webs:
                web.stop()
            for worker in workers:
                worker.stop()


async def test_clients_on_two_web_processes_get_their_own_events(cluster: list[WebProcess]) -> None:
    clients: list[tuple[WsClient, httpx.AsyncClient, list[str]]] = []
    try:
        for n in range(6):
            web = cluster[n % 2]
            other = cluster[(n + 1) % 2]
            ws = await WsClient.open(f"ws://127.0.0.1:{web.port}/ws")
            await ws.next()
            # Tasks are started through the *other* web process: events still reach this socket.
            http = httpx.AsyncClient(timeout=PATIENCE, base_url=f"http://127.0.0.1:{other.port}")
            clients.append((ws, http, []))
        for ws, http, owned in clients:
            for _ in range(2):
                response = await http.post(
                    "/api/tasks/steps", params={"name": "spread"}, json={}, headers={"X-Client-Id": ws.client_id}
                )
                assert response.status_code == 202, response.text
                owned.append(response.json()["id"])
        for ws, _, owned in clients:
            finished: set[str] = set()
            with anyio.fail_after(PATIENCE):
                while finished != set(owned):
                    message = await ws.next()
                    if any(terminal(task_id)(message) for task_id in owned):
                        finished.add(message["task"]["id"])
            events = task_events(ws.received)
            assert {m["task"]["id"] for m in events} == set(owned), "only its own tasks"
            assert_gapless(ws.received[1:], after=0)
            assert_progress_never_decreases(ws.received)
            assert all(m["task"]["status"] == "completed" for m in events if terminal(m["task"]["id"])(m))
        # Both workers took part.
        pids: set[Any] = set()
        for ws, _, _ in clients:
            pids |= {m["task"].get("result", {}).get("pid") for m in task_events(ws.received) if "result" in m["task"]}
        assert len(pids - {None}) == 2
    finally:
        for ws, http, _ in clients:
            await ws.close()
            await http.aclose()
