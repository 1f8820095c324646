"""progressq: background tasks whose progress streams live to exactly the client that started them.

Importing ``progressq`` imports no web framework and no Redis client; adapters live in
``progressq.starlette``, ``progressq.litestar`` and ``progressq.fastapi``, backends in
``progressq.backends``.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from progressq._context import TaskContext
from progressq._worker import TaskPolicy
from progressq.backends.memory import MemoryBackend
from progressq.contracts import Backend, ClientRegistry, Event, Processor, TaskQueue, TaskRecord
from progressq.errors import (
    BackendUnavailable,
    ConfigurationError,
    ForbiddenIdentity,
    HubNotOpen,
    ProgressQError,
    QueueFull,
    Retry,
    TaskAlreadyFinished,
    TaskNotFound,
    TooManyTasks,
    UnknownTaskKind,
    ValidationError,
)
from progressq.hooks import AttemptOutcome, Submission, TaskHooks
from progressq.hub import Hub, TaskKind
from progressq.identity import IdentityAuthority

# A library's loggers stay silent until the application configures logging.
logging.getLogger("progressq").addHandler(logging.NullHandler())

try:
    __version__ = version("progressq")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = (
    "AttemptOutcome",
    "Backend",
    "BackendUnavailable",
    "ClientRegistry",
    "ConfigurationError",
    "Event",
    "ForbiddenIdentity",
    "Hub",
    "HubNotOpen",
    "IdentityAuthority",
    "MemoryBackend",
    "Processor",
    "ProgressQError",
    "QueueFull",
    "Retry",
    "Submission",
    "TaskAlreadyFinished",
    "TaskContext",
    "TaskHooks",
    "TaskKind",
    "TaskNotFound",
    "TaskPolicy",
    "TaskQueue",
    "TaskRecord",
    "TooManyTasks",
    "UnknownTaskKind",
    "ValidationError",
    "__version__",
)
