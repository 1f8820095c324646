"""A process that runs no tasks says so when its queued tasks are taken by no worker."""

from __future__ import annotations

import logging

import anyio
import pytest

from progressq import Hub, MemoryBackend, TaskContext, _no_worker
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

SECRET = "no-worker-test-secret-0123"


def _hub(concurrency: int) -> Hub:
    hub = Hub(MemoryBackend(), secret=SECRET, concurrency=concurrency)

    @hub.task("wait")
    async def wait(ctx: TaskContext) -> None:
        await anyio.sleep(0.2)

    return hub


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


def test_the_backend_is_described_without_its_password() -> None:
    redis = pytest.importorskip("progressq.backends.redis")
    backend = redis.RedisBackend.from_url("redis://:hunter2@127.0.0.1:6379/5", prefix="app")
    described = _no_worker.describe_backend(backend)
    assert "hunter2" not in described
    assert "127.0.0.1:6379/5" in described
    assert "'app'" in described


def test_a_postgres_backend_is_described_with_its_schema_without_its_password() -> None:
    postgres = pytest.importorskip("progressq.backends.postgres")
    backend = postgres.PostgresBackend.from_url("postgresql://app:hunter2@127.0.0.1:5432/app", schema="shop")
    described = _no_worker.describe_backend(backend)
    assert described == "PostgresBackend postgresql://app:***@127.0.0.1:5432/app schema 'shop'"
