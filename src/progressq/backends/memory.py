"""The in-memory backend: one process, no dependencies, bounded everywhere.

The queue (``MemoryTaskQueue``) keeps each owner's waiting tasks in line and hands them out
round-robin across owners, under a cap of running tasks per owner, with an admission limit; the
registry (``MemoryClientRegistry``) keeps per-identity sequences and ring buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from progressq.backends._memory_queue import MemoryTaskQueue
from progressq.backends._memory_registry import MemoryClientRegistry
from progressq.contracts import Backend, BackendDefaults, ClientRegistry, Lease, TaskQueue, TaskRecord

__all__ = ("MemoryBackend", "MemoryClientRegistry", "MemoryTaskQueue")


class MemoryBackend(BackendDefaults):
    """Queue and registry for one process. ``async with MemoryBackend() as backend``.

    Submits use the contract's default (``BackendDefaults``): in one process, nothing runs
    between an enqueue and its announcement. A save and its publish are one step of its own,
    without a coroutine per part: every progress report takes that path.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        retention: float = 86_400.0,
        max_finished: int = 10_000,
        history_size: int = 1000,
        max_identities: int = 100_000,
    ) -> None:
        self._queue = MemoryTaskQueue(capacity=capacity, retention=retention, max_finished=max_finished)
        self._registry = MemoryClientRegistry(history_size=history_size, max_identities=max_identities)

    @property
    def queue(self) -> MemoryTaskQueue:
        return self._queue

    @property
    def registry(self) -> MemoryClientRegistry:
        return self._registry

    async def save_and_publish(
        self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> bool:
        """``save``, ``publish`` (``taskProgress``) and, with ``finish``, ``finish``, as the
        default does them, in one call that never suspends."""
        if not self.save_and_publish_now(lease, record, view_json):
            return False
        if finish:
            self._queue.finish_now(lease)
        return True

    def save_and_publish_now(self, lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
        """:meth:`save_and_publish` without ``finish``, as a plain call."""
        if not self._queue.save_now(lease, record):
            return False
        self._registry.publish_now(record.owner, "taskProgress", record.id, record.revision, view_json)
        return True

    def plain_save_and_publish(self) -> Callable[[Lease, TaskRecord, bytes], bool] | None:
        """:meth:`save_and_publish_now`, what a report calls, unless ``save_and_publish`` was
        replaced (overridden by a subclass, or set on this instance): the reports must reach
        the replacement."""
        if type(self).save_and_publish is not MemoryBackend.save_and_publish or "save_and_publish" in vars(self):
            return None
        return self.save_and_publish_now

    async def ping(self) -> bool:
        return True

    async def __aenter__(self) -> MemoryBackend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._queue.close()


if TYPE_CHECKING:  # mypy proves that the memory backend satisfies the contracts
    _queue: TaskQueue = MemoryTaskQueue()
    _registry: ClientRegistry = MemoryClientRegistry()
    _backend: Backend = MemoryBackend()
