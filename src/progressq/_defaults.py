"""The defaults of the backend contract's capabilities, written in terms of its required
operations. Import them from :mod:`progressq.contracts`."""

from __future__ import annotations

import binascii
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from progressq._records import Lease, TaskRecord
from progressq.errors import ConfigurationError, DuplicateTask

if TYPE_CHECKING:
    from progressq.contracts import ClientRegistry, TaskQueue

__all__ = ("BackendDefaults", "QueueDefaults", "SinkDefaults", "random_task_id")


def random_task_id() -> str:
    """16 random URL-safe characters (96 bits, less the ids starting with ``-``): an id is
    typed on command lines (``progressq dead retry APP ID``), where a leading ``-`` reads as
    an option."""
    # ``secrets.token_urlsafe(12)`` spelled out: the same bytes (``os.urandom``), the same text,
    # without its five Python calls (through ``secrets``, ``random`` and ``base64``) per task
    while (token := binascii.b2a_base64(os.urandom(12), newline=False).translate(_URL_SAFE)).startswith(b"-"):
        pass
    return token.decode()


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


class QueueDefaults:
    """Subclass it in a ``TaskQueue`` to get every capability the queue does not implement
    itself: one lease at a time, no cap per owner, no heartbeat of its own, no list of failed
    tasks, unique keys looked up in the owner's list, periodic slots claimed in this object,
    random task ids.
    Override a method to do better; the conformance suite checks the queue's own methods and
    these defaults alike.

    The defaults keep what state they need in the instance, under names starting with
    ``_defaults_``; no ``__init__`` to call.
    """

    if TYPE_CHECKING:  # the queue's own, required operations

        async def lease(self) -> Lease: ...

        async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]: ...

    async def lease_many(self, limit: int) -> Sequence[Lease]:
        """One lease (``lease``), however many slots are free."""
        return [await self.lease()]

    async def watch_lost_leases(self) -> AsyncIterator[tuple[str, int]]:
        """Never yields: without a heartbeat of its own, a queue loses no lease behind the
        engine's back (the engine sees ``save`` or ``extend`` refused)."""
        await anyio.sleep_forever()
        nothing: tuple[tuple[str, int], ...] = ()
        for lost in nothing:  # pragma: no cover - never reached; makes this an async generator
            yield lost

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Ignored: no cap per owner; tasks go out in the order of ``lease`` (first in, first
        out within each owner)."""

    async def dead_letters(self, limit: int) -> Sequence[TaskRecord]:
        """Raises ``ConfigurationError``: this queue keeps no list of failed tasks."""
        raise ConfigurationError(f"{type(self).__name__} keeps no list of failed tasks")

    async def forget_dead(self, task_id: str) -> bool:
        """Raises ``ConfigurationError``: this queue keeps no list of failed tasks."""
        raise ConfigurationError(f"{type(self).__name__} keeps no list of failed tasks")

    async def task_with_key(self, owner: str, key: str) -> TaskRecord | None:
        """The owner's unfinished task with the unique ``key``, found in ``list_by_owner``."""
        for task in await self.list_by_owner(owner):
            if task.key == key and not task.finished:
                return task
        return None

    def new_task_id(self, owner: str) -> str:
        """16 random URL-safe characters, never starting with ``-``, whoever the owner."""
        return random_task_id()

    async def claim_slot(self, key: str, ttl: float) -> bool:
        """True for the first claim of ``key`` within ``ttl`` seconds made on this object.
        Right for a queue that no other process shares; a shared queue must override it."""
        slots: dict[str, float] = vars(self).setdefault("_defaults_slots", {})
        now = time.monotonic()
        if len(slots) > 1000:  # forget the slots that have passed
            for passed in [k for k, until in slots.items() if until <= now]:
                del slots[passed]
        if slots.get(key, -math.inf) > now:
            return False
        slots[key] = now + ttl
        return True


class BackendDefaults:
    """Subclass it in a ``Backend`` to get the operations that span its queue and registry,
    made of their required operations (see ``AnnouncingEnqueue`` and ``SaveAndPublish`` for
    what they give up). Override them to make each one atomic step.

    The defaults keep what state they need in the instance, under names starting with
    ``_defaults_``; no ``__init__`` to call.
    """

    if TYPE_CHECKING:  # the backend's own, required members

        @property
        def queue(self) -> TaskQueue: ...

        @property
        def registry(self) -> ClientRegistry: ...

    async def enqueue_and_announce(self, record: TaskRecord, *, max_unfinished: int | None) -> int | None:
        """Refuse a duplicate unique key, count the owner's unfinished tasks, ``enqueue``,
        then publish ``taskQueued``: one submit per owner at a time in this process (other
        processes may race it)."""
        if max_unfinished is None and record.key is None:
            await self.queue.enqueue(record)
        else:
            async with self._defaults_owner_lock(record.owner):
                if record.key is not None:  # before the limit: a duplicate adds no task
                    holder = await self.queue.task_with_key(record.owner, record.key)
                    if holder is not None:
                        raise DuplicateTask(holder.id)
                if max_unfinished is not None:
                    tasks = await self.queue.list_by_owner(record.owner)
                    unfinished = sum(1 for task in tasks if not task.finished)
                    if unfinished >= max_unfinished:
                        return unfinished
                await self.queue.enqueue(record)
        await self.registry.publish(record.owner, "taskQueued", record.id, record.revision, record.view_json())
        return None

    async def save_and_publish(
        self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> bool:
        """``save``; if stored, ``publish`` (``taskProgress``), then ``finish`` when asked."""
        if not await self.queue.save(lease, record):
            return False
        await self.registry.publish(record.owner, "taskProgress", record.id, record.revision, view_json)
        if finish:
            await self.queue.finish(lease)
        return True

    def plain_save_and_publish(self) -> Callable[[Lease, TaskRecord, bytes], bool] | None:
        """None: the default ``save_and_publish`` waits for the queue and the registry."""
        return None

    def describe(self) -> str:
        """The backend's class name: where its data lives is the backend's to say."""
        return type(self).__name__

    @contextlib.asynccontextmanager
    async def _defaults_owner_lock(self, owner: str) -> AsyncIterator[None]:
        """One holder per owner at a time; a lock lives only while someone wants it."""
        locks: dict[str, Any] = vars(self).setdefault("_defaults_owner_locks", {})
        lock, users = locks.get(owner) or (anyio.Lock(), 0)
        locks[owner] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = locks[owner]
            if users == 1:
                del locks[owner]
            else:
                locks[owner] = (lock, users - 1)


class SinkDefaults:
    """Subclass it in an ``EventSink`` that has nothing to redo when the registry lost the
    identity's history: one that records or counts what it is given, and keeps no view of
    the identity's tasks to bring up to date."""

    __slots__ = ()

    def resync(self) -> None:
        """Nothing: the events delivered next are taken as they come."""
