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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from anyio.streams.memory import MemoryObjectSendStream
from redis.asyncio import Redis

from progressq.backends.redis._batch import _Batcher
from progressq.backends.redis._common import (
    _GROUP,
    _Keys,
    _record_decoder,
    _record_encoder,
    _Scripts,
    _text,
    _unavailable,
)
from progressq.backends.redis._keeping import _CancelSubscription, _Held, _LeaseKeeping
from progressq.backends.redis._pubsub import _PubSub
from progressq.backends.redis._taking import _Taking
from progressq.contracts import (
    CancelOutcome,
    Lease,
    QueueStatistics,
    TaskRecord,
    utc_now,
)
from progressq.errors import BackendUnavailable, ConfigurationError, DuplicateTask, QueueFull

logger = logging.getLogger("progressq.redis")


class RedisTaskQueue(_Taking, _LeaseKeeping):
    """The task queue on Redis. Made by :class:`RedisBackend`; see the module doc."""

    def __init__(
        self,
        client: Redis,
        scripts: _Scripts,
        keys: _Keys,
        pubsub: _PubSub,
        *,
        capacity: int | None,
        retention: float,
        lease_timeout: float,
        max_deliveries: int,
        consumer: str,
        forget_consumers_after: float,
        publish: Callable[[TaskRecord], Awaitable[object]],
        announce: Callable[[TaskRecord], tuple[list[str], list[Any]]],
        publish_call: Callable[[TaskRecord, bytes], tuple[list[str], list[Any]]],
    ) -> None:
        self._client = client
        self._announce = announce
        self._publish_call = publish_call
        self._batcher = _Batcher(client)
        self._scripts = scripts
        self._keys = keys
        self._pubsub = pubsub
        self._capacity = capacity or 0
        self._retention = max(1, math.ceil(retention))
        self._lease_ms = max(1, int(lease_timeout * 1000))
        self._lease_timeout = lease_timeout
        self._max_deliveries = max_deliveries
        self._consumer = consumer
        self._forget_consumers_ms = max(1, int(forget_consumers_after * 1000))
        self._prune_every = max(1.0, min(60.0, forget_consumers_after / 2))
        self._next_prune = -math.inf
        self._publish = publish
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
        """Store and queue ``record`` and announce it (``taskQueued``) in one step, so that no
        worker can take the task, and publish its "running", before its owner was told it was
        queued. (The hub's own publish of that event is then dropped as already done.)"""
        await self.enqueue_and_announce(record, max_unfinished=None)

    async def enqueue_and_announce(self, record: TaskRecord, *, max_unfinished: int | None) -> int | None:
        """Store, queue and announce ``record`` (``taskQueued``) in one script, one round
        trip, unless its owner already has ``max_unfinished`` unfinished tasks: then nothing
        is queued and the owner's count of unfinished tasks is returned. None: queued.

        Raises:
            QueueFull: the queue is at capacity; nothing was queued.
            DuplicateTask: the owner has an unfinished task with ``record.key``; nothing was
                queued (the key is checked before the limit).
        """
        created_ms = int(record.created_at.timestamp() * 1000)
        announce_keys, announce_args = self._announce(record)
        with _unavailable("enqueue"):
            answer = await self._batcher.call(
                self._scripts.submit,
                [
                    self._keys.task(record.id),
                    self._keys.owner(record.owner),
                    self._keys.counters,
                    self._keys.waiting(record.owner),
                    self._keys.unfinished,
                    self._keys.ring,
                    self._keys.wake,
                    self._keys.delayed,
                    *announce_keys[:2],
                    self._keys.unique(record.owner),
                ],
                [
                    record.id,
                    _record_encoder.encode(record),
                    record.owner,
                    created_ms,
                    record.revision,
                    self._capacity,
                    self._retention,
                    *announce_args[:7],
                    max_unfinished or 0,
                    int(record.run_at.timestamp() * 1000) if record.run_at is not None else 0,
                    record.key or "",
                    self._keys.task(""),
                ],
            )
        done = int(answer[0])
        if done == -2:
            return int(answer[1])
        if done == -3:
            raise DuplicateTask(_text(answer[1]))
        if done == 0:
            raise QueueFull(retry_after=1.0)
        if done == -1:
            raise ConfigurationError(f"a task with id {record.id!r} already exists")
        return None

    def _save_call(self, lease: Lease, record: TaskRecord) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the save script (the commit script starts with them)."""
        keys = [
            self._keys.task(record.id),
            self._keys.counters,
            self._keys.owner(record.owner),
            self._keys.unfinished,
            self._keys.running,
            self._keys.waiting(record.owner),
            self._keys.wake,
            self._keys.dead,
        ]
        args = [
            lease.record.attempt,
            _record_encoder.encode(record),
            record.revision,
            record.status,
            1 if record.finished else 0,
            self._retention,
            self._keys.cancel_channel,
            record.id,
            record.owner,
        ]
        return keys, args

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        held = self._held.get(record.id)
        save_keys, save_args = self._save_call(lease, record)
        try:
            with _unavailable("save"):
                stored = await self._scripts.save(keys=save_keys, args=save_args)
        except BackendUnavailable:
            # A failed change of status means the engine gives up on this attempt: stop the
            # heartbeat so that the lease expires and another worker runs the task again.
            if held is not None and held.attempt == lease.record.attempt and held.status != record.status:
                del self._held[record.id]
            raise
        if not stored:
            self._drop(lease)
            return False
        if held is not None and held.attempt == lease.record.attempt:
            held.status = record.status
        return True

    async def save_and_publish(
        self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> bool:
        """:meth:`save`, then publish ``record`` to its owner (``taskProgress``, its view
        ``view_json``) and, with ``finish``, :meth:`finish` the lease: one script, one round
        trip. A fenced-out save publishes and acknowledges nothing. False: fenced out."""
        held = self._held.get(record.id)
        save_keys, save_args = self._save_call(lease, record)
        publish_keys, publish_args = self._publish_call(record, view_json)
        try:
            with _unavailable("save"):
                answer = await self._batcher.call(
                    self._scripts.commit,
                    [*save_keys, *publish_keys[:2], self._keys.stream],
                    [
                        *save_args,
                        *publish_args,
                        1 if finish else 0,
                        _GROUP,
                        lease.token,
                    ],
                )
        except BackendUnavailable:
            if held is not None and held.attempt == lease.record.attempt and (finish or held.status != record.status):
                del self._held[record.id]
            raise
        if not int(answer[0]):
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
            await self._scripts.finish(
                keys=[self._keys.task(lease.record.id), self._keys.stream],
                args=[lease.record.attempt, _GROUP, lease.token],
            )

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        self._drop(lease)
        with _unavailable("release"):
            done = await self._scripts.release(
                keys=[
                    self._keys.task(record.id),
                    self._keys.stream,
                    self._keys.counters,
                    self._keys.running,
                    self._keys.waiting(record.owner),
                    self._keys.ring,
                    self._keys.wake,
                    self._keys.delayed,
                ],
                args=[
                    lease.record.attempt,
                    _record_encoder.encode(record),
                    record.revision,
                    _GROUP,
                    record.id,
                    record.owner,
                    int(record.run_at.timestamp() * 1000) if record.run_at is not None else 0,
                ],
            )
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
                code = await self._scripts.cancel(
                    keys=[
                        key,
                        self._keys.counters,
                        self._keys.owner(owner),
                        self._keys.unfinished,
                        self._keys.waiting(owner),
                        self._keys.ring,
                        self._keys.delayed,
                    ],
                    args=[
                        owner,
                        record.revision,
                        _record_encoder.encode(cancelled),
                        cancelled.revision,
                        self._retention,
                        self._keys.cancel_channel,
                        task_id,
                    ],
                )
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
