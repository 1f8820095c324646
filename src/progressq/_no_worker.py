"""A warning for a web process whose queued tasks no worker takes.

A process with ``concurrency=0`` only submits: its tasks run in ``progressq worker``
processes on the same backend. When none runs, or one runs against another database, key
prefix or schema, tasks wait forever and nothing fails. This watch makes that visible: it names the
backend this process uses (``Backend.describe``), as the worker's own startup line does, so
that the two can be compared.
"""

from __future__ import annotations

import logging

import anyio

from progressq.contracts import Backend, TaskQueue

__all__ = ("warn_while_no_worker_takes_tasks",)

logger = logging.getLogger("progressq.hub")

CHECK_INTERVAL = 10.0
"""Seconds between two looks at the queue; a warning needs two looks in a row."""


async def warn_while_no_worker_takes_tasks(queue: TaskQueue, backend: Backend) -> None:
    """Log a warning when tasks stay queued with none running for two checks in a row.

    Logged once per such stretch; a worker taking a task (or the queue emptying) ends it.
    """
    looks_stuck = warned = False
    while True:
        await anyio.sleep(CHECK_INTERVAL)
        try:
            statistics = await queue.statistics()
        except Exception:  # the backend being down is reported elsewhere (health)
            continue
        stuck = statistics.queued > 0 and statistics.running == 0
        if stuck and looks_stuck and not warned:
            warned = True
            logger.warning(
                "%d task(s) queued and no worker took one in %g s. This process runs none "
                "(concurrency=0): is a `progressq worker` running on this same backend, %s?",
                statistics.queued,
                CHECK_INTERVAL,
                backend.describe(),
            )
        if not stuck:
            warned = False
        looks_stuck = stuck
