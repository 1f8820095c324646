"""The application the multi-process tests run with ``progressq worker tests.worker_app:hub``.

Configured by environment variables, so that each test gets its own key prefix.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from progressq import Hub, TaskContext
from progressq.backends.redis import RedisBackend

SECRET = "multi-process-test-secret"


def runs_key(prefix: str, task_id: str) -> str:
    """Where the ``count`` task notes its runs."""
    return f"{prefix}:test:runs:{task_id}"


def make_hub(
    url: str,
    prefix: str,
    *,
    lease_timeout: float = 1.0,
    shutdown_grace: float = 5.0,
    forget_consumers_after: float = 600.0,
    **hub: Any,
) -> Hub:
    backend = RedisBackend.from_url(
        url, prefix=prefix, lease_timeout=lease_timeout, max_deliveries=4, forget_consumers_after=forget_consumers_after
    )
    app = Hub(backend, secret=SECRET, progress_interval=0.02, shutdown_grace=shutdown_grace, **hub)

    @app.task("steps", timeout=60)
    async def steps(ctx: TaskContext) -> dict[str, int]:
        """``payload``: ``steps`` reports, ``delay`` seconds apart; the message names the pid."""
        count = int(ctx.payload.get("steps", 20))
        delay = float(ctx.payload.get("delay", 0.1))
        for step in range(1, count + 1):
            await anyio.sleep(delay)
            await ctx.report(step * 100 / count, f"step {step} pid {os.getpid()}")
        return {"pid": os.getpid()}

    @app.task("count", timeout=60)
    async def count(ctx: TaskContext) -> dict[str, int]:
        """Notes each run in Redis (``attempt:pid`` on the list ``{prefix}:test:runs:{task id}``)
        before it sleeps ``delay`` seconds: how often a task ran, and where, for the tests."""
        await backend.client.rpush(runs_key(prefix, ctx.task_id), f"{ctx.attempt}:{os.getpid()}")
        await anyio.sleep(float(ctx.payload.get("delay", 0.0)))
        return {"pid": os.getpid()}

    @app.task("boom")
    async def boom(ctx: TaskContext) -> None:
        """Always fails: a dead letter for the operator's commands."""
        raise RuntimeError(f"boom {ctx.payload.get('n', 0)}")

    return app


hub = make_hub(
    os.environ.get("PQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("PQ_TEST_PREFIX", "pqtest:unset"),
    lease_timeout=float(os.environ.get("PQ_TEST_LEASE_TIMEOUT", "1.0")),
    shutdown_grace=float(os.environ.get("PQ_TEST_GRACE", "5.0")),
    forget_consumers_after=float(os.environ.get("PQ_TEST_FORGET_CONSUMERS", "600")),
    concurrency=0,
)
if os.environ.get("PQ_TEST_EVERY"):  # a periodic task each worker process runs the schedule of
    hub.every(float(os.environ["PQ_TEST_EVERY"]), "steps", owner="clock", params={"steps": 1, "delay": 0.0})
