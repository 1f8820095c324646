"""The in-memory task queue: tasks and their records in this process.

It keeps each owner's waiting tasks in line and hands them out round-robin across owners,
under a cap of running tasks per owner, with an admission limit.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Sequence

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from progressq.contracts import CancelOutcome, Lease, QueueDefaults, QueueStatistics, TaskRecord, utc_now
from progressq.errors import ConfigurationError, DuplicateTask, QueueFull
from progressq.messages import TERMINAL_STATUSES

__all__ = ("MemoryTaskQueue",)


class MemoryTaskQueue(QueueDefaults):
    """Tasks and their records in this process.

    Args:
        capacity: most tasks waiting at once; ``enqueue`` raises ``QueueFull`` beyond it.
        retention: seconds a finished task stays readable and listed (as on Redis).
        max_finished: most finished tasks kept at once, whatever their age (oldest
            forgotten first): the memory bound.
    """

    def __init__(self, *, capacity: int = 10_000, retention: float = 86_400.0, max_finished: int = 10_000) -> None:
        if capacity < 1 or not retention > 0 or max_finished < 0:
            raise ConfigurationError("capacity must be >= 1, retention > 0 and max_finished >= 0")
        self._capacity = capacity
        self._retention = retention
        self._max_finished = max_finished
        # Admission is counted here, not bounded by the lines, so that a task handed back by
        # a stopping worker can always be requeued, even when new work is refused.
        self._waiting: dict[str, deque[str]] = {}  # each owner's line, oldest first
        self._turns: OrderedDict[str, None] = OrderedDict()  # owners with waiting tasks, in turn order
        self._running_by_owner: Counter[str] = Counter()
        self._running_cap: int | None = None
        self._dead: dict[str, None] = {}  # failed tasks, oldest first
        self._slots: dict[str, float] = {}  # claimed periodic slots: until when (monotonic)
        self._delayed: list[tuple[float, str]] = []  # (when it may run, epoch seconds; id), a heap
        self._changed: anyio.Event | None = None  # set when a waiting lease may go ahead
        self._records: dict[str, TaskRecord] = {}
        self._by_owner: dict[str, dict[str, None]] = {}
        self._finished: deque[tuple[float, str]] = deque()  # (when it finished, monotonic; id)
        self._queued = 0
        self._running: set[str] = set()
        self._watchers: set[MemoryObjectSendStream[str]] = set()
        self._keyed: dict[tuple[str, str], str] = {}  # (owner, unique key): its unfinished task's id
        self._leasing = False  # this process's workers take tasks from this queue

    async def enqueue(self, record: TaskRecord) -> None:
        if record.key is not None:
            holder = await self.task_with_key(record.owner, record.key)
            if holder is not None:
                raise DuplicateTask(holder.id)
        if self._queued >= self._capacity:
            raise QueueFull(retry_after=1.0)
        if record.key is not None:
            self._keyed[record.owner, record.key] = record.id
        self._store(record)
        self._by_owner.setdefault(record.owner, {})[record.id] = None
        self._queued += 1
        self._wait_in_line_or_until(record, first=False)

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Hand an owner no more than ``limit`` running tasks at once (``None``: no limit)."""
        self._running_cap = limit
        self._wake()

    async def task_with_key(self, owner: str, key: str) -> TaskRecord | None:
        """The owner's unfinished task with the unique ``key``, or None."""
        task_id = self._keyed.get((owner, key))
        record = None if task_id is None else self._records.get(task_id)
        return record if record is not None and not record.finished else None

    async def lease(self) -> Lease:
        """The next task: the first owner's in turn that is below the cap of running tasks."""
        self._leasing = True
        while True:
            self._promote_due()
            task_id = self._next_in_turn()
            if task_id is None:
                self._changed = anyio.Event()
                due = self._delayed[0][0] - time.time() if self._delayed else math.inf
                with anyio.move_on_after(due):
                    await self._changed.wait()
                continue
            record = self._records[task_id]
            self._queued -= 1
            leased = record.evolve(attempt=record.attempt + 1)
            self._records[task_id] = leased
            self._running.add(task_id)
            self._running_by_owner[record.owner] += 1
            return Lease(leased, str(leased.attempt))

    def _next_in_turn(self) -> str | None:
        """Take the next task round-robin across owners below the cap, or None."""
        cap = self._running_cap
        for _ in range(len(self._turns)):  # at most one look at each owner, without a copy
            owner = next(iter(self._turns))
            self._turns.move_to_end(owner)  # taken or passed over: its next turn is after the others
            if cap is not None and self._running_by_owner[owner] >= cap:
                continue
            line = self._waiting[owner]
            task_id = line.popleft()
            if not line:
                del self._waiting[owner], self._turns[owner]
            return task_id
        return None

    def _wait_in_line_or_until(self, record: TaskRecord, *, first: bool) -> None:
        if record.run_at is not None and record.run_at.timestamp() > time.time():
            heapq.heappush(self._delayed, (record.run_at.timestamp(), record.id))
            self._wake()  # a waiting lease now has a time to wake up at
        else:
            self._wait_in_line(record, first=first)

    def _promote_due(self) -> None:
        """Put the delayed tasks whose time has come in their owners' lines."""
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            task_id = heapq.heappop(self._delayed)[1]
            record = self._records.get(task_id)
            if record is not None and not record.finished and task_id not in self._running:
                self._wait_in_line(record, first=False)  # else cancelled (or forgotten) meanwhile

    def _wait_in_line(self, record: TaskRecord, *, first: bool) -> None:
        line = self._waiting.get(record.owner)
        if line is None:
            line = self._waiting[record.owner] = deque()
            self._turns[record.owner] = None
        if first:
            line.appendleft(record.id)
        else:
            line.append(record.id)
        self._wake()

    def _stop_running(self, record: TaskRecord) -> None:
        if record.id in self._running:
            self._running.discard(record.id)
            self._running_by_owner[record.owner] -= 1
            if self._running_by_owner[record.owner] <= 0:
                del self._running_by_owner[record.owner]
            self._wake()  # its owner may be below the cap again

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        return self.save_now(lease, record)

    def save_now(self, lease: Lease, record: TaskRecord) -> bool:
        """:meth:`save` without a coroutine (nothing in it waits), for the backend's
        ``save_and_publish``."""
        leased = lease.record  # ``_holds``, spelled out: a call less on every progress report
        current = self._records.get(leased.id)
        if current is None or current.attempt != leased.attempt or current.status in TERMINAL_STATUSES:
            return False
        if current.cancel_requested and not record.cancel_requested:
            record = msgspec.structs.replace(record, cancel_requested=True)
        if record.status in TERMINAL_STATUSES:  # ``record.finished``, without a property call per report
            self._store(record)
            self._stop_running(record)
        else:  # all that ``_store`` does for an unfinished record, on every progress report
            self._records[record.id] = record
        return True

    async def extend(self, lease: Lease) -> bool:
        return self._holds(lease) is not None

    async def finish(self, lease: Lease) -> None:
        self.finish_now(lease)

    def finish_now(self, lease: Lease) -> None:
        """:meth:`finish` without a coroutine."""
        self._stop_running(lease.record)

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        current = self._holds(lease)
        if current is None:
            return False
        if current.cancel_requested and not record.cancel_requested:  # asked while it ran: keep it
            record = msgspec.structs.replace(record, cancel_requested=True)
        self._records[record.id] = record
        self._stop_running(record)
        self._queued += 1
        self._wait_in_line_or_until(record, first=True)  # it had its turn: first in its owner's line
        return True

    async def get(self, task_id: str) -> TaskRecord | None:
        self._expire()
        return self._records.get(task_id)

    async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        self._expire()
        ids = self._by_owner.get(owner, {})
        newest = [self._records[task_id] for task_id in reversed(ids)]
        return newest if limit is None else newest[:limit]

    async def request_cancel(self, task_id: str, owner: str) -> CancelOutcome | None:
        self._expire()  # an expired task is not found here either, as with get
        record = self._records.get(task_id)
        if record is None or record.owner != owner:
            return None
        if record.finished:
            return CancelOutcome("finished", record)
        if record.status in ("queued", "scheduled") and task_id not in self._running:  # leased: its worker's
            cancelled = record.evolve(
                status="cancelled", finished_at=utc_now(), message="cancelled", cancel_requested=True
            )
            self._queued -= 1
            line = self._waiting.get(owner)
            if line is not None and task_id in line:  # else it is delayed: left out when due
                line.remove(task_id)
                if not line:
                    del self._waiting[owner], self._turns[owner]
            self._store(cancelled)
            return CancelOutcome("cancelled", cancelled)
        # Running: the flag is invisible to clients, so the revision stays.
        flagged = msgspec.structs.replace(record, cancel_requested=True)
        self._records[task_id] = flagged
        for watcher in list(self._watchers):
            watcher.send_nowait(task_id)
        return CancelOutcome("requested", flagged)

    async def watch_cancellations(self) -> AsyncIterator[str]:
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._watchers.add(send)
        try:
            async with receive:
                async for task_id in receive:
                    yield task_id
        finally:
            self._watchers.discard(send)
            send.close()

    async def statistics(self) -> QueueStatistics:
        self._expire()
        scheduled = sum(1 for _, task_id in self._delayed if self._waits_for_its_time(task_id))
        return QueueStatistics(
            queued=self._queued,
            running=len(self._running),
            scheduled=scheduled,
            dead=len(self._dead),
            workers=1 if self._leasing else 0,  # this process's, the only one
        )

    def _waits_for_its_time(self, task_id: str) -> bool:
        """Whether a task in the delayed heap is still to be handed out (the heap keeps the
        entries of tasks cancelled meanwhile until they are due)."""
        record = self._records.get(task_id)
        return record is not None and not record.finished and task_id not in self._running

    def close(self) -> None:
        """Nothing to release; its workers stopped taking tasks."""
        self._leasing = False

    def _holds(self, lease: Lease) -> TaskRecord | None:
        """The stored record if ``lease`` is still the current, unfinished attempt."""
        leased = lease.record
        current = self._records.get(leased.id)
        if current is None or current.attempt != leased.attempt or current.status in TERMINAL_STATUSES:
            return None
        return current

    async def claim_slot(self, key: str, ttl: float) -> bool:
        """True for the first claim of ``key`` within ``ttl`` seconds."""
        now = time.monotonic()
        if len(self._slots) > 1000:
            self._slots = {k: until for k, until in self._slots.items() if until > now}
        if self._slots.get(key, -math.inf) > now:
            return False
        self._slots[key] = now + ttl
        return True

    async def dead_letters(self, limit: int) -> Sequence[TaskRecord]:
        """Up to ``limit`` failed tasks, the most recently failed first."""
        self._expire()
        return [self._records[task_id] for task_id in list(reversed(self._dead))[:limit]]

    async def forget_dead(self, task_id: str) -> bool:
        """Take a task off the failed list; False if it was not on it."""
        return self._dead.pop(task_id, False) is None

    def _store(self, record: TaskRecord) -> None:
        self._records[record.id] = record
        if record.status == "failed":
            self._dead[record.id] = None
        if record.finished:
            self._free_key(record)
            self._finished.append((time.monotonic(), record.id))
            while len(self._finished) > self._max_finished:
                self._forget(self._finished.popleft()[1])
            self._expire()

    def _free_key(self, record: TaskRecord) -> None:
        """Its unique key, if it has one, may name a new task: this one is finished."""
        if record.key is not None and self._keyed.get((record.owner, record.key)) == record.id:
            del self._keyed[record.owner, record.key]

    def _expire(self) -> None:
        """Forget finished tasks older than ``retention``."""
        finished = self._finished
        if finished and finished[0][0] + self._retention <= time.monotonic():
            cutoff = time.monotonic() - self._retention
            while finished and finished[0][0] <= cutoff:
                self._forget(finished.popleft()[1])

    def _forget(self, task_id: str) -> None:
        record = self._records.pop(task_id, None)
        self._dead.pop(task_id, None)
        if record is None:
            return
        self._free_key(record)
        owned = self._by_owner.get(record.owner)
        if owned is not None:
            owned.pop(task_id, None)
            if not owned:
                del self._by_owner[record.owner]
