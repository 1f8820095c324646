"""The exceptions progressq raises. One root, few meaningful subclasses."""

from __future__ import annotations

__all__ = (
    "ConfigurationError",
    "DuplicateTask",
    "ForbiddenIdentity",
    "ProgressQError",
    "QueueFull",
    "Retry",
    "TaskNotFound",
    "TooManyTasks",
    "TaskAlreadyFinished",
    "UnknownTaskKind",
    "BackendUnavailable",
    "HubNotOpen",
    "ValidationError",
)


class ProgressQError(Exception):
    """Root of every error progressq raises on purpose."""


class Retry(Exception):
    """Raise it from a task handler to run the task again later, e.g. ``raise Retry(after=5)``.

    The attempt ends and the task goes back to ``queued``, holding no worker, until ``after``
    seconds have passed (the kind's backoff when ``None``). It counts as an attempt: once the
    kind's ``max_attempts`` are used up, the task ends ``failed``.

    Args:
        after: seconds to wait before the next attempt; the kind's backoff when ``None``.
        reason: why, shown to the task's owner as its ``error`` meanwhile.
    """

    def __init__(self, after: float | None = None, reason: str = "") -> None:
        if after is not None and after < 0:
            raise ValueError("Retry(after=...) must be >= 0 seconds")
        super().__init__(reason or (f"retry requested in {after:g} s" if after is not None else "retry requested"))
        self.after = after


class ConfigurationError(ProgressQError):
    """The hub, a backend or an adapter was set up in a way that cannot work."""


class HubNotOpen(ConfigurationError):
    """The hub was used before it was opened (or after it closed)."""

    def __init__(self) -> None:
        super().__init__(
            "the hub is not open: open it for the application's lifetime, with `async with hub:` "
            "or by mounting it with an adapter (progressq.starlette.mount, progressq.fastapi.create_router, "
            "ProgressQPlugin) whose lifespan the server runs"
        )


class ValidationError(ProgressQError, ValueError):
    """A task's params do not match its kind's declared type; nothing was queued.

    Attributes:
        field: the path of the offending field (``"size.width"``, ``"items[0]"``), or None
            when the params as a whole are wrong.
        message: what is wrong, without the path.
        code: ``"invalid_field"``, or ``"malformed_json"`` for params that are not JSON.
    """

    def __init__(self, message: str, *, field: str | None, code: str = "invalid_field") -> None:
        super().__init__(f"{message} (at {field})" if field else message)
        self.message = message
        self.field = field
        self.code = code


class UnknownTaskKind(ProgressQError):
    """A task was submitted for a kind that no handler is registered for."""


class QueueFull(ProgressQError):
    """The queue is at capacity; nothing was enqueued. Try again later."""

    def __init__(self, retry_after: float = 1.0) -> None:
        super().__init__("the task queue is full")
        self.retry_after = retry_after


class TooManyTasks(ProgressQError):
    """The owner already has the most unfinished tasks the hub allows; nothing was queued."""

    def __init__(self, retry_after: float = 5.0) -> None:
        super().__init__("the owner has too many unfinished tasks")
        self.retry_after = retry_after


class TaskNotFound(ProgressQError):
    """No task with that id belongs to the caller (it may belong to someone else)."""


class TaskAlreadyFinished(ProgressQError):
    """The task reached a terminal state; it can no longer be cancelled."""


class ForbiddenIdentity(ProgressQError):
    """A client presented an identity id that the server did not issue or vouch for."""


class BackendUnavailable(ProgressQError):
    """The backend (e.g. Redis) did not answer; the operation did not take effect."""


class DuplicateTask(ProgressQError):
    """A queue refused a task: its owner has an unfinished task with the same unique key
    (``hub.submit`` answers with that task instead)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"the owner has an unfinished task with this key ({task_id})")
        self.task_id = task_id
