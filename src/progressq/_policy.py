"""How one kind of task runs (its timeout, retries and progress rate), and how an attempt's
outcome is kept (its error's text, its result's summary)."""

from __future__ import annotations

import random
from typing import Any

import msgspec

from progressq.errors import Retry

__all__ = ("TaskPolicy", "error_text", "result_summary")

_MAX_ERROR_LENGTH = 1000
_MAX_RESULT_BYTES = 16 * 1024


class TaskPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How one kind of task runs.

    Attributes:
        timeout: seconds an attempt may run before it is cancelled; ``None`` for no limit.
        max_attempts: attempts before a failing task is ``failed`` (1 = no retry).
        progress_interval: least seconds between two progress events of one task; the
            hub's setting when ``None``.
        retry_on: the exceptions (a timeout is a ``TimeoutError``) after which a task with
            attempts left is tried again; any other fails it at once. ``Retry`` always retries.
        retry_backoff: seconds before the second attempt; doubled for each next one.
        retry_backoff_max: the most seconds between two attempts.
        retry_jitter: wait a random 50-100 % of the backoff, so that tasks that failed
            together do not all come back at once.
    """

    timeout: float | None = 300.0
    max_attempts: int = 1
    progress_interval: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    retry_jitter: bool = True

    def retries(self, error: BaseException) -> bool:
        """Whether an attempt that raised ``error`` is tried again (attempts allowing)."""
        return isinstance(error, (Retry, *self.retry_on))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        delay = min(self.retry_backoff_max, self.retry_backoff * 2.0 ** min(attempt - 1, 62))
        return delay * random.uniform(0.5, 1.0) if self.retry_jitter else delay


def error_text(exc: BaseException) -> str:
    """A failed attempt's error as stored and shown: its type and message, cut short."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_ERROR_LENGTH]


def result_summary(result: Any) -> Any:
    """The result as clients will see it: JSON-able and small, else its text."""
    if result is None:
        return None
    try:
        if len(msgspec.json.encode(result)) <= _MAX_RESULT_BYTES:
            return result
    except (TypeError, msgspec.EncodeError):
        pass
    return repr(result)[:_MAX_ERROR_LENGTH]
