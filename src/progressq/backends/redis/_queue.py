"""The Redis task queue.

Each owner's waiting tasks are a list; the owners with waiting tasks, a ring that
``take`` turns (fair dispatch, see ``_taking``). A task taken is added to a stream and read
by the worker's consumer at once: the stream's consumer group keeps the leases (heartbeat,
takeover, see ``_keeping``). Every write is fenced by the task's attempt.

With several shards (Redis Cluster, see ``_shards``) each shard has all of that; an operation
on a task or an owner goes to the owner's shard, workers take from the shards in turn, and
the counts and lists over every shard are summed or merged here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any

import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from progressq._defaults import random_task_id
from progressq.backends.redis._batch import _Batcher
from progressq.backends.redis._calls import _Calls, _Row
from progressq.backends.redis._common import _Client, _Keys, _loose, _outage, _text, _unavailable, stored_record
from progressq.backends.redis._keeping import _CancelSubscription, _Held, _LeaseKeeping
from progressq.backends.redis._pubsub import _PubSub
from progressq.backends.redis._shards import _Shards
from progressq.backends.redis._taking import _ShardTaking, _Taking
from progressq.backends.redis._waking import _ShardWaking
from progressq.contracts import (
    CancelOutcome,
    Lease,
    QueueDefaults,
    QueueStatistics,
    TaskRecord,
    utc_now,
)
from progressq.errors import BackendUnavailable, ConfigurationError, DuplicateTask, QueueFull

logger = logging.getLogger("progressq.redis")


class RedisTaskQueue(_Taking, _LeaseKeeping, QueueDefaults):
    """The task queue on Redis. Made by :class:`RedisBackend`; see the module doc."""

    def __init__(
        self,
        client: _Client,
        calls: Sequence[_Calls],
        shards: _Shards,
        pubsubs: Sequence[_PubSub],
        *,
        lease_timeout: float,
        max_deliveries: int,
        consumer: str,
        forget_consumers_after: float,
    ) -> None:
        self._client = client
        self._calls = calls  # per shard
        # per shard: a batch is one script call, of one slot on Redis Cluster
        self._batchers: list[_Batcher[_Row]] = [_Batcher(shard_calls.send) for shard_calls in calls]
        self._shards = shards
        self._one_shard = shards.count == 1  # every owner's shard is 0: no call to ask which
        self._keys = shards.keys  # per shard
        self._pubsubs = pubsubs  # per shard (one shared by all on a single Redis)
        self._lease_ms = max(1, int(lease_timeout * 1000))
        self._lease_timeout = lease_timeout
        self._max_deliveries = max_deliveries
        self._consumer = consumer
        self._forget_consumers_ms = max(1, int(forget_consumers_after * 1000))
        self._prune_every = max(1.0, min(60.0, forget_consumers_after / 2))
        self._next_prune = -math.inf
        self._presence_busy = False  # marking this worker alive (and pruning) is under way
        self._held: dict[str, _Held] = {}
        self._watchers: set[MemoryObjectSendStream[str]] = set()
        self._loss_watchers: set[MemoryObjectSendStream[tuple[str, int]]] = set()
        self._cancel_sub = _CancelSubscription(self)
        self._cancel_subscribed: set[int] = set()  # the shards whose cancel channel is subscribed
        self._taking = [_ShardTaking(n) for n in range(shards.count)]
        self._taking_started = False  # this process's workers have taken tasks (it is a worker)
        self._turn = 0  # the shard the next take starts with
        self._running_per_owner: int | None = None
        # several shards: one wait per shard's wake-up list (no BLPOP across slots)
        self._waking = None if shards.count == 1 else _ShardWaking(client, [keys.wake for keys in shards.keys])

    @property
    def consumer(self) -> str:
        """This process's consumer name in the stream's group."""
        return self._consumer

    def new_task_id(self, owner: str) -> str:
        """A new task id; with several shards it ends with its owner's (``<random>.<N>``), so
        that ``get`` goes straight to it."""
        return random_task_id() if self._one_shard else self._shards.new_task_id(owner)

    def _calls_of(self, owner: str) -> _Calls:
        """The calls of the shard that holds ``owner``'s tasks."""
        return self._calls[self._shards.of_owner(owner)]

    def _keys_of(self, owner: str) -> _Keys:
        return self._keys[self._shards.of_owner(owner)]

    def _shard_of(self, owner: str) -> int:
        return self._shards.of_owner(owner)

    async def enqueue(self, record: TaskRecord) -> None:
        """Store and queue ``record`` in one script (its announcement is the backend's
        ``enqueue_and_announce``)."""
        shard = self._shards.of_owner(record.owner)
        await self._enqueue_by(shard, self._calls[shard].enqueue_row(record), record)

    async def _drain_batches(self) -> None:
        """Wait for the batches on their way (before the client closes)."""
        for batcher in self._batchers:
            await batcher.drain()

    async def _enqueue_by(self, shard: int, row: _Row, record: TaskRecord) -> int | None:
        """Run an enqueue or a submit ``row`` of ``record`` (in the shard's next batch): None
        when queued, else the owner's count of unfinished tasks that refused it (a submit's
        limit).

        Raises:
            QueueFull: the queue is at capacity; nothing was queued.
            DuplicateTask: the owner has an unfinished task with ``record.key``; nothing was
                queued (the key is checked before the limit).
        """
        try:  # the batch's future itself (no coroutine, no context manager: one per submit)
            answer = await self._batchers[shard].submit(row)
        except Exception as exc:
            outage = _outage(exc, "enqueue")
            if outage is None:
                raise
            raise outage from exc
        code = int(answer[0])
        if code == -2:
            return int(answer[1])
        if code == -3:
            raise DuplicateTask(_text(answer[1]))
        if code == 0:
            raise QueueFull(retry_after=1.0)
        if code == -1:
            raise ConfigurationError(f"a task with id {record.id!r} already exists")
        return None

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        call = self._calls_of(record.owner).save(lease, record)
        return await self._save_by(call.run(), lease, record, finish=False)

    def _commit(self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool) -> Coroutine[Any, Any, bool]:
        """Save ``record``, publish it and (with ``finish``) acknowledge the task, in the next
        batch of its owner's shard: the coroutine that waits for it (False: fenced out).

        A plain function: the row joins its batch now, and only ``_save_by`` waits. Under
        load every running task has a commit out, often for longer than the cycle
        collector's young generations last; whatever is alive across that wait is promoted
        to the old generation, and the full passes that follow scan every object of the
        process (thousands of connections' worth). One coroutine less per event in flight."""
        shard = 0 if self._one_shard else self._shards.of_owner(record.owner)
        held = self._held.get(record.id)
        # the status goes to Redis with the attempt's first commit (which tells a cancel asked
        # meanwhile again) and when it changes; a report leaves it out (the script's `commit`)
        restated = (
            held is None or held.attempt != lease.record.attempt or not held.committed or held.status != record.status
        )
        # a report that changes only the progress and message stores only those (a tick, laid over
        # the record this attempt stored whole last; see `stored_record`)
        tick = (
            not restated
            and held is not None
            and held.whole is not None
            and msgspec.structs.replace(
                held.whole, progress=record.progress, message=record.message, revision=record.revision
            )
            == record
        )
        row = self._calls[shard].commit_row(lease, record, view_json, finish=finish, restated=restated, tick=tick)
        return self._save_by(self._batchers[shard].submit(row), lease, record, finish=finish, whole=not tick)

    async def _save_by(
        self, answering: Awaitable[Any], lease: Lease, record: TaskRecord, *, finish: bool, whole: bool = True
    ) -> bool:
        """Await a save or a commit of ``record`` under ``lease`` (with ``finish``: one that
        acknowledges the task too; ``whole``: one that stores the whole record, not a tick),
        keeping the held lease's state. False: fenced out."""
        held = self._held.get(record.id)
        try:
            answer = await answering
        except Exception as exc:  # (not `_unavailable`: a context manager per event costs)
            outage = _outage(exc, "save")
            if outage is None:
                raise
            if held is not None:
                held.whole = None  # stored or not, unknown: the next commit stores the whole record
            # A failed change of status means the engine gives up on this attempt: stop the
            # heartbeat so that the lease expires and another worker runs the task again.
            # (The heartbeat may have let go of the lease while the call was out: taken over.)
            if held is not None and held.attempt == lease.record.attempt and (finish or held.status != record.status):
                self._drop(lease)
            raise outage from exc
        if not int(answer[0] if isinstance(answer, list) else answer):
            self._drop(lease)
            return False
        if finish:
            self._drop(lease)
        elif held is not None and held.attempt == lease.record.attempt:
            held.status = record.status
            held.committed = True
            if whole:
                held.whole = record
        return True

    async def finish(self, lease: Lease) -> None:
        self._drop(lease)
        with _unavailable("finish"):
            await self._calls_of(lease.record.owner).finish(lease).run()

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        self._drop(lease)
        with _unavailable("release"):
            done = await self._calls_of(record.owner).release(lease, record).run()
        return bool(done)

    async def task_with_key(self, owner: str, key: str) -> TaskRecord | None:
        """The owner's unfinished task with the unique ``key``, or None."""
        with _unavailable("unique key"):
            task_id = await _loose(self._client).hget(self._keys_of(owner).unique(owner), key)
        record = None if task_id is None else await self.get(_text(task_id))
        return record if record is not None and not record.finished else None

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, from the shard its id names; an id that names none (or a task not
        found there) is looked for in every other shard, in one round of requests."""
        shards = self._shards.search_order(task_id)
        with _unavailable("get"):
            if self._shards.of_task(task_id) is not None:
                fields = await _loose(self._client).hmget(self._keys[shards[0]].task(task_id), _RECORD_FIELDS)
                record = _record_from(fields)
                if record is not None or len(shards) == 1:
                    return record
                shards = shards[1:]
            async with self._client.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.hmget(self._keys[shard].task(task_id), _RECORD_FIELDS)
                rows = await pipe.execute()
        for fields in rows:
            record = _record_from(fields)
            if record is not None:
                return record
        return None

    async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        keys = self._keys_of(owner)
        index = keys.owner(owner)
        last = 999 if limit is None else min(limit, 1000) - 1
        if last < 0:
            return []
        with _unavailable("list"):
            raw_ids: Any = await _loose(self._client).zrevrange(index, 0, last)
            ids = [_text(i) for i in raw_ids]
            if not ids:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(keys.task(task_id), _RECORD_FIELDS)
                rows = await pipe.execute()
            records: list[TaskRecord] = []
            gone: list[str] = []
            for task_id, fields in zip(ids, rows, strict=True):
                record = _record_from(fields)
                if record is None:
                    gone.append(task_id)
                else:
                    records.append(record)
            if gone:
                await self._client.zrem(index, *gone)
        return records

    async def request_cancel(self, task_id: str, owner: str) -> CancelOutcome | None:
        calls = self._calls_of(owner)
        key = self._keys_of(owner).task(task_id)
        for _ in range(20):
            with _unavailable("cancel"):
                fields = await _loose(self._client).hmget(key, [*_RECORD_FIELDS, "owner"])
            record = _record_from(fields)
            if record is None or fields[-1] is None or _text(fields[-1]) != owner:
                return None
            cancelled = record.evolve(
                status="cancelled", finished_at=utc_now(), message="cancelled", cancel_requested=True
            )
            with _unavailable("cancel"):
                code = await calls.cancel(record, cancelled).run()
            if code == 0:
                return None
            if code == 1:
                return CancelOutcome("cancelled", cancelled)
            if code == 2:
                return CancelOutcome("requested", msgspec.structs.replace(record, cancel_requested=True))
            if code == 3:
                latest = await self.get(task_id)
                return CancelOutcome("finished", latest or record)
            # 4: it changed between our read and the script; read again
        raise BackendUnavailable(f"task {task_id} kept changing; cancel not applied")

    async def claim_slot(self, key: str, ttl: float) -> bool:
        """True for the first claim of ``key`` within ``ttl`` seconds, in any process."""
        with _unavailable("claim slot"):
            return bool(await self._client.set(f"{self._keys[0].prefix}:slot:{key}", 1, nx=True, px=int(ttl * 1000)))

    async def dead_letters(self, limit: int) -> Sequence[TaskRecord]:
        """Up to ``limit`` failed tasks, the most recently failed first, over every shard
        (those whose record expired are taken off the list)."""
        with _unavailable("dead letters"):
            listed: list[tuple[float, int, str]] = []
            async with self._client.pipeline(transaction=False) as pipe:
                for keys in self._keys:
                    pipe.zrevrange(keys.dead, 0, max(0, limit - 1), withscores=True)
                for shard, rows in enumerate(await pipe.execute()):
                    listed += [(float(score), shard, _text(task_id)) for task_id, score in rows]
            listed = sorted(listed, reverse=True)[: max(0, limit)]
            if not listed:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for _, shard, task_id in listed:
                    pipe.hmget(self._keys[shard].task(task_id), _RECORD_FIELDS)
                rows = await pipe.execute()
            records = [_record_from(fields) for fields in rows]
            for (_, shard, task_id), record in zip(listed, records, strict=True):
                if record is None:
                    await self._client.zrem(self._keys[shard].dead, task_id)
        return [record for record in records if record is not None]

    async def forget_dead(self, task_id: str) -> bool:
        """Take a task off the failed list; False if it was not on it."""
        with _unavailable("dead letters"):
            for shard in self._shards.search_order(task_id):
                if await self._client.zrem(self._keys[shard].dead, task_id):
                    return True
        return False

    async def statistics(self) -> QueueStatistics:
        """The counts of every process on this Redis (every shard); ``workers``: the worker
        processes whose heartbeat (every third of ``lease_timeout``) was seen within two lease
        timeouts (by this host's clock): a worker gone longer than that has lost its leases
        anyway."""
        seen_since = int(time.time() * 1000) - 2 * self._lease_ms
        queued = running = scheduled = dead = 0
        with _unavailable("statistics"):
            async with self._client.pipeline(transaction=False) as pipe:
                for keys in self._keys:
                    pipe.hmget(keys.counters, ["queued", "running"])
                    pipe.zcard(keys.delayed)
                    pipe.zcard(keys.dead)
                pipe.zcount(self._keys[0].workers, seen_since, "+inf")
                *per_shard, workers = await pipe.execute()
        for n in range(0, len(per_shard), 3):
            (shard_queued, shard_running), shard_scheduled, shard_dead = per_shard[n : n + 3]
            queued += max(0, int(shard_queued or 0))
            running += max(0, int(shard_running or 0))
            scheduled += int(shard_scheduled)
            dead += int(shard_dead)
        return QueueStatistics(queued=queued, running=running, scheduled=scheduled, dead=dead, workers=int(workers))


_RECORD_FIELDS = ["data", "attempt", "rev", "cancel", "tick"]


def _record_from(fields: Sequence[Any]) -> TaskRecord | None:
    """A record from its hash fields ``data, attempt, rev, cancel, tick``; Lua owns attempt,
    rev and cancel (and a report's tick lays its progress over the data: ``stored_record``)."""
    data, attempt, rev, cancel, tick = fields[:5]
    if data is None:
        return None
    return msgspec.structs.replace(
        stored_record(data, tick),
        attempt=int(attempt),
        revision=int(rev),
        cancel_requested=bool(int(cancel or 0)),
    )
