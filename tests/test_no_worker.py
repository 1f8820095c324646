"""A process that runs no tasks says so when its queued tasks are taken by no worker."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import anyio
import pytest

from progressq import Hub, MemoryBackend, TaskContext, _no_worker
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

SECRET = "no-worker-test-secret-0123"


class DescribedBackend(MemoryBackend):
    def describe(self) -> str:
        return "DescribedBackend in the shop's own memory"


def _hub(concurrency: int, backend: MemoryBackend | None = None) -> Hub:
    hub = Hub(backend or MemoryBackend(), secret=SECRET, concurrency=concurrency)

    @hub.task("wait")
    async def wait(ctx: TaskContext) -> None:
        await anyio.sleep(0.2)

    return hub


memory_hub = _hub(concurrency=1)  # for the worker CLI below


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "progressq.hub" and r.levelno == logging.WARNING]


async def test_queued_tasks_that_no_worker_takes_are_reported_once_with_the_backend(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_no_worker, "CHECK_INTERVAL", 0.05)
    with caplog.at_level(logging.WARNING, logger="progressq.hub"):
        async with _hub(concurrency=0) as hub:
            await hub.submit("wait", owner="alice")
            with anyio.fail_after(PATIENCE):
                while not _warnings(caplog):
                    await anyio.sleep(0.05)
            await anyio.sleep(0.3)  # several more checks: still one warning
    [warning] = _warnings(caplog)
    assert "no worker took one" in warning
    assert "MemoryBackend" in warning


async def test_a_process_whose_workers_take_its_tasks_is_quiet(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_no_worker, "CHECK_INTERVAL", 0.05)
    with caplog.at_level(logging.WARNING, logger="progressq.hub"):
        async with _hub(concurrency=1) as hub:
            for _ in range(3):
                await hub.submit("wait", owner="alice")
            await anyio.sleep(0.5)
    assert _warnings(caplog) == []


async def test_the_warning_names_the_backend_as_it_describes_itself(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_no_worker, "CHECK_INTERVAL", 0.05)
    with caplog.at_level(logging.WARNING, logger="progressq.hub"):
        async with _hub(concurrency=0, backend=DescribedBackend()) as hub:
            await hub.submit("wait", owner="alice")
            with anyio.fail_after(PATIENCE):
                while not _warnings(caplog):
                    await anyio.sleep(0.05)
    [warning] = _warnings(caplog)
    assert "DescribedBackend in the shop's own memory?" in warning


def test_a_backend_on_the_defaults_is_described_by_its_class() -> None:
    assert MemoryBackend().describe() == "MemoryBackend"


def test_the_backend_is_described_without_its_password() -> None:
    redis = pytest.importorskip("progressq.backends.redis")
    backend = redis.RedisBackend.from_url("redis://:hunter2@127.0.0.1:6379/5", prefix="app")
    assert backend.describe() == "RedisBackend redis://:***@127.0.0.1:6379/5 prefix 'app'"


def test_a_postgres_backend_is_described_with_its_schema_without_its_password() -> None:
    postgres = pytest.importorskip("progressq.backends.postgres")
    backend = postgres.PostgresBackend.from_url("postgresql://app:hunter2@127.0.0.1:5432/app", schema="shop")
    assert backend.describe() == "PostgresBackend postgresql://app:***@127.0.0.1:5432/app schema 'shop'"


def test_a_worker_process_on_a_memory_backend_warns_that_it_sees_only_its_own_tasks() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "progressq", "worker", "tests.test_no_worker:memory_hub"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PROGRESSQ_SECRET": SECRET},
    )
    assert worker.stderr is not None
    lines: list[str] = []
    give_up = threading.Timer(PATIENCE, worker.kill)  # a worker that never warns ends the read
    give_up.start()
    try:
        while not any("sees only tasks submitted in it" in line for line in lines):
            line = worker.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        give_up.cancel()
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=PATIENCE)
    assert any("the hub's backend is in memory" in line for line in lines), lines
