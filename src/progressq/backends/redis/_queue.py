"""The Redis task queue.

Each owner's waiting tasks are a list; the owners with waiting tasks, a ring that
take.lua turns (fair dispatch, see ``_taking``). A task taken is added to a stream and read
by the worker's consumer at once: the stream's consumer group keeps the leases (heartbeat,
takeover, see ``_keeping``). Every write is fenced by the task's attempt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from anyio.streams.memory import MemoryObjectSendStream
from redis.asyncio import Redis

from progressq.backends.redis._batch import _Batcher
from progressq.backends.redis._calls import _Call, _Calls
from progressq.backends.redis._common import _Keys, _record_decoder, _text, _unavailable
from progressq.backends.redis._keeping import _CancelSubscription, _Held, _LeaseKeeping
from progressq.backends.redis._pubsub import _PubSub
from progressq.backends.redis._taking import _Taking
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
        client: Redis,
        calls: _Calls,
        keys: _Keys,
        pubsub: _PubSub,
        *,
        lease_timeout: float,
        max_deliveries: int,
        consumer: str,
        forget_consumers_after: float,
    ) -> None:
        self._client = client
        self._batcher = _Batcher(client)
        self._calls = calls
        self._keys = keys
        self._pubsub = pubsub
        self._lease_ms = max(1, int(lease_timeout * 1000))
        self._lease_timeout = lease_timeout
        self._max_deliveries = max_deliveries
        self._consumer = consumer
        self._forget_consumers_ms = max(1, int(forget_consumers_after * 1000))
        self._prune_every = max(1.0, min(60.0, forget_consumers_after / 2))
        self._next_prune = -math.inf
        self._held: dict[str, _Held] = {}
        self._watchers: set[MemoryObjectSendStream[str]] = set()
        self._loss_watchers: set[MemoryObjectSendStream[tuple[str, int]]] = set()
        self._cancel_sub = _CancelSubscription(self)
        self._group_ready = False
        self._cursor = "0-0"
        self._next_reclaim = -math.inf
        self._running_per_owner: int | None = None

    @property
    def consumer(self) -> str:
        """This process's consumer name in the stream's group."""
        return self._consumer

    async def enqueue(self, record: TaskRecord) -> None:
        """Store and queue ``record`` in one script (its announcement is the backend's
        ``enqueue_and_announce``)."""
        await self._enqueue_by(self._calls.enqueue(record), record)

    async def _enqueue_by(self, call: _Call, record: TaskRecord) -> int | None:
        """Run an enqueue or a submit ``call`` of ``record``: None when queued, else the owner's
        count of unfinished tasks that refused it (a submit's limit).

        Raises:
            QueueFull: the queue is at capacity; nothing was queued.
            DuplicateTask: the owner has an unfinished task with ``record.key``; nothing was
                queued (the key is checked before the limit).
        """
        with _unavailable("enqueue"):
            answer = await self._batcher.call(self._calls.script, call.keys, call.args)
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
        return await self._save_by(self._calls.save(lease, record), lease, record, finish=False, batched=False)

    async def _save_by(self, call: _Call, lease: Lease, record: TaskRecord, *, finish: bool, batched: bool) -> bool:
        """Run a save or a commit ``call`` of ``record`` under ``lease`` (with ``finish``: one
        that acknowledges the task too), keeping the held lease's state. False: fenced out."""
        held = self._held.get(record.id)
        try:
            with _unavailable("save"):
                if batched:
                    answer = await self._batcher.call(self._calls.script, call.keys, call.args)
                else:
                    answer = await self._calls.run(call)
        except BackendUnavailable:
            # A failed change of status means the engine gives up on this attempt: stop the
            # heartbeat so that the lease expires and another worker runs the task again.
            if held is not None and held.attempt == lease.record.attempt and (finish or held.status != record.status):
                del self._held[record.id]
            raise
        if not int(answer[0] if isinstance(answer, list) else answer):
            self._drop(lease)
            return False
        if finish:
            self._drop(lease)
        elif held is not None and held.attempt == lease.record.attempt:
            held.status = record.status
        return True

    async def finish(self, lease: Lease) -> None:
        self._drop(lease)
        with _unavailable("finish"):
            await self._calls.run(self._calls.finish(lease))

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        self._drop(lease)
        with _unavailable("release"):
            done = await self._calls.run(self._calls.release(lease, record))
        return bool(done)

    async def task_with_key(self, owner: str, key: str) -> TaskRecord | None:
        """The owner's unfinished task with the unique ``key``, or None."""
        with _unavailable("unique key"):
            task_id = await self._client.hget(self._keys.unique(owner), key)
        record = None if task_id is None else await self.get(_text(task_id))
        return record if record is not None and not record.finished else None

    async def get(self, task_id: str) -> TaskRecord | None:
        with _unavailable("get"):
            fields = await self._client.hmget(self._keys.task(task_id), ["data", "attempt", "rev", "cancel"])
        return _record_from(fields)

    async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        index = self._keys.owner(owner)
        last = 999 if limit is None else min(limit, 1000) - 1
        if last < 0:
            return []
        with _unavailable("list"):
            raw_ids: Any = await self._client.zrevrange(index, 0, last)
            ids = [_text(i) for i in raw_ids]
            if not ids:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(self._keys.task(task_id), ["data", "attempt", "rev", "cancel"])
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
        key = self._keys.task(task_id)
        for _ in range(20):
            with _unavailable("cancel"):
                fields = await self._client.hmget(key, ["data", "attempt", "rev", "cancel", "owner", "state"])
            record = _record_from(fields[:4])
            if record is None or fields[4] is None or _text(fields[4]) != owner:
                return None
            cancelled = record.evolve(
                status="cancelled", finished_at=utc_now(), message="cancelled", cancel_requested=True
            )
            with _unavailable("cancel"):
                code = await self._calls.run(self._calls.cancel(record, cancelled))
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
            return bool(await self._client.set(f"{self._keys.prefix}:slot:{key}", 1, nx=True, px=int(ttl * 1000)))

    async def dead_letters(self, limit: int) -> Sequence[TaskRecord]:
        """Up to ``limit`` failed tasks, the most recently failed first (those whose record
        expired are taken off the list)."""
        with _unavailable("dead letters"):
            raw_ids: Any = await self._client.zrevrange(self._keys.dead, 0, max(0, limit - 1))
            ids = [_text(i) for i in raw_ids]
            if not ids:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(self._keys.task(task_id), ["data", "attempt", "rev", "cancel"])
                rows = await pipe.execute()
            records = [_record_from(fields) for fields in rows]
            gone = [task_id for task_id, record in zip(ids, records, strict=True) if record is None]
            if gone:
                await self._client.zrem(self._keys.dead, *gone)
        return [record for record in records if record is not None]

    async def forget_dead(self, task_id: str) -> bool:
        """Take a task off the failed list; False if it was not on it."""
        with _unavailable("dead letters"):
            return bool(await self._client.zrem(self._keys.dead, task_id))

    async def statistics(self) -> QueueStatistics:
        """The counts of every process on this Redis; ``workers``: the worker processes
        whose heartbeat (every third of ``lease_timeout``) was seen within two lease timeouts
        (by this host's clock): a worker gone longer than that has lost its leases anyway."""
        seen_since = int(time.time() * 1000) - 2 * self._lease_ms
        with _unavailable("statistics"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._keys.counters, ["queued", "running"])
                pipe.zcard(self._keys.delayed)
                pipe.zcard(self._keys.dead)
                pipe.zcount(self._keys.workers, seen_since, "+inf")
                (queued, running), scheduled, dead, workers = await pipe.execute()
        return QueueStatistics(
            queued=max(0, int(queued or 0)),
            running=max(0, int(running or 0)),
            scheduled=int(scheduled),
            dead=int(dead),
            workers=int(workers),
        )


def _record_from(fields: Sequence[Any]) -> TaskRecord | None:
    """A record from its hash fields ``data, attempt, rev, cancel``; Lua owns the last three."""
    data, attempt, rev, cancel = fields[:4]
    if data is None:
        return None
    return msgspec.structs.replace(
        _record_decoder.decode(data),
        attempt=int(attempt),
        revision=int(rev),
        cancel_requested=bool(int(cancel or 0)),
    )
