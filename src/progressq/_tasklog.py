"""One structured log line when an attempt of a task starts and one when it ends.

``progressq.tasks`` at INFO: the kind, the task id, the attempt, and at the end the elapsed
and the outcome, in the message (``key=value``) and as attributes of the record (``kind``,
``task_id``, ``attempt``, ``elapsed``, ``outcome``) for structured handlers. Never the
owner: an identity id is a capability, and a task id authorizes nothing.
"""

from __future__ import annotations

import logging
import time

from progressq.contracts import TaskRecord

__all__ = ("attempt_ended", "attempt_started")

logger = logging.getLogger("progressq.tasks")


def attempt_started(record: TaskRecord) -> float:
    """Log the start of ``record``'s attempt; the time to pass to :func:`attempt_ended`."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "task started kind=%s task_id=%s attempt=%d",
            record.kind,
            record.id,
            record.attempt,
            extra={"kind": record.kind, "task_id": record.id, "attempt": record.attempt},
        )
    return time.monotonic()


def attempt_ended(record: TaskRecord, outcome: str, started: float) -> None:
    """Log the end of ``record``'s attempt: ``outcome`` is ``completed``, ``failed``,
    ``cancelled``, ``retrying``, ``interrupted`` (handed back at shutdown), ``lost`` (its
    lease was taken over) or ``unrecorded`` (the backend refused its outcome; it runs again)."""
    if logger.isEnabledFor(logging.INFO):
        elapsed = round(time.monotonic() - started, 3)
        logger.info(
            "task ended kind=%s task_id=%s attempt=%d elapsed=%.3f outcome=%s",
            record.kind,
            record.id,
            record.attempt,
            elapsed,
            outcome,
            extra={
                "kind": record.kind,
                "task_id": record.id,
                "attempt": record.attempt,
                "elapsed": elapsed,
                "outcome": outcome,
            },
        )
