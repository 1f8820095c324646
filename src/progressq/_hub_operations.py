"""The hub's periodic schedules and its operator's view of failed tasks (part of ``Hub``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from progressq._periodic import Cron, Periodic
from progressq.contracts import DeadLetters, TaskQueue, TaskRecord
from progressq.errors import ConfigurationError, HubNotOpen, TaskNotFound

__all__ = ("HubOperations",)


class HubOperations:
    """Periodic tasks and dead letters: the part of :class:`~progressq.Hub` that runs on a
    schedule or for an operator, rather than for a client."""

    _schedules: list[Periodic]

    if TYPE_CHECKING:  # the hub's own, used here
        _stack: object | None

        @property
        def queue(self) -> TaskQueue: ...

        async def submit(self, kind: str, *, owner: str, name: str | None = None, params: Any = None) -> TaskRecord: ...

    def every(
        self,
        seconds: float,
        kind: str,
        *,
        owner: str = "system",
        params: Any = None,
        name: str | None = None,
        schedule: str | None = None,
    ) -> None:
        """Submit a task of ``kind`` every ``seconds`` (at multiples of it on the wall
        clock), once per slot however many processes run this hub on one backend.

        Args:
            seconds: the period; slots are its multiples since the epoch.
            kind: the task kind to submit.
            owner: the identity the tasks belong to (and whose clients see them).
            params: the tasks' params.
            name: the tasks' display name; the kind's name when omitted.
            schedule: the schedule's unique name (its slots' key); ``kind`` when omitted.
        """
        if not seconds > 0:
            raise ConfigurationError("a periodic task's interval must be > 0 seconds")
        self._schedule(Periodic(schedule or kind, kind, owner, params, interval=seconds, task_name=name))

    def cron(
        self,
        expression: str,
        kind: str,
        *,
        owner: str = "system",
        params: Any = None,
        name: str | None = None,
        schedule: str | None = None,
    ) -> None:
        """Submit a task of ``kind`` at each minute the cron ``expression`` matches (five
        fields, UTC, e.g. ``"*/15 8-18 * * 1-5"``), once per slot across processes; the
        other arguments as for :meth:`every`."""
        self._schedule(Periodic(schedule or kind, kind, owner, params, cron=Cron(expression), task_name=name))

    def _schedule(self, periodic: Periodic) -> None:
        if self._stack is not None:
            raise ConfigurationError("register periodic tasks before the hub is opened")
        if any(s.name == periodic.name for s in self._schedules):
            raise ConfigurationError(f"a periodic task named {periodic.name!r} is registered already")
        self._schedules.append(periodic)

    async def _fire(self, periodic: Periodic, slot: datetime) -> None:
        await self.submit(periodic.kind, owner=periodic.owner, name=periodic.task_name, params=periodic.params)

    # --- dead letters: the failed tasks, for an operator ----------------------------------

    async def dead_letters(self, limit: int = 100) -> Sequence[TaskRecord]:
        """The failed tasks (attempts or deliveries used up), most recent first, with their
        last ``error``; kept as long as the backend retains finished tasks. Any owner's: an
        operator's view, not for a client."""
        return await self._dead_letters().dead_letters(limit)

    async def replay(self, task_id: str) -> TaskRecord:
        """Submit a failed task again, as a new task of the same owner, kind, name and params
        (its owner is told, as of any submit), and take the failed one off the list.

        Raises:
            TaskNotFound: no failed task has this id (any more).
            ConfigurationError: the backend keeps no list of failed tasks (the task was
                submitted again all the same).
        """
        failed = await self.queue.get(task_id)
        if failed is None or failed.status != "failed":
            raise TaskNotFound(f"no failed task {task_id!r}")
        again = await self.submit(failed.kind, owner=failed.owner, name=failed.name, params=failed.payload)
        await self._dead_letters().forget_dead(task_id)
        return again

    async def purge_dead(self) -> int:
        """Take every failed task off the list; how many there were."""
        dead = self._dead_letters()
        purged = 0
        while records := await dead.dead_letters(1000):
            for record in records:
                purged += await dead.forget_dead(record.id)
        return purged

    def _dead_letters(self) -> DeadLetters:
        """The queue, whose ``dead_letters`` raise ``ConfigurationError`` if it keeps no list."""
        if self._stack is None:
            raise HubNotOpen()
        return self.queue
