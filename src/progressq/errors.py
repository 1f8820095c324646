"""The exceptions progressq raises. One root, few meaningful subclasses."""

from __future__ import annotations

__all__ = (
    "ConfigurationError",
    "ForbiddenIdentity",
    "ProgressQError",
    "QueueFull",
    "TaskNotFound",
    "TooManyTasks",
    "TaskAlreadyFinished",
    "UnknownTaskKind",
    "BackendUnavailable",
)


class ProgressQError(Exception):
    """Root of every error progressq raises on purpose."""


class ConfigurationError(ProgressQError):
    """The hub, a backend or an adapter was set up in a way that cannot work."""


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
