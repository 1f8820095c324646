"""The Redis task queue: a stream with a consumer group, fenced by attempt."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectSendStream
from redis import exceptions as redis_errors
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
from progressq.backends.redis._pubsub import _PubSub, _Subscription
from progressq.contracts import (
    CancelOutcome,
    Lease,
    QueueStatistics,
    TaskRecord,
    utc_now,
)
from progressq.errors import BackendUnavailable, ConfigurationError, QueueFull

logger = logging.getLogger("progressq.redis")


class _Held:
    """A lease this process holds, kept alive by the heartbeat."""

    __slots__ = ("attempt", "cancel_told", "entry", "status")

    def __init__(self, entry: str, attempt: int, status: str) -> None:
        self.entry = entry
        self.attempt = attempt
        self.status = status
        self.cancel_told = False


class _CancelSubscription(_Subscription):
    def __init__(self, queue: RedisTaskQueue) -> None:
        self._queue = queue

    async def message(self, data: bytes) -> None:
        self._queue._tell_cancel(data.decode())


class RedisTaskQueue:
    """The task queue on a Redis Stream. Made by :class:`RedisBackend`; see the module doc."""

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
        self._outage = False
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
                    *announce_keys[:2],
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
                ],
            )
        done = int(answer[0])
        if done == -2:
            return int(answer[1])
        if done == 0:
            raise QueueFull(retry_after=1.0)
        if done == -1:
            raise ConfigurationError(f"a task with id {record.id!r} already exists")
        return None

    async def lease(self) -> Lease:
        """Wait for the next task; rides out a Redis outage (logs, then retries)."""
        return (await self.lease_many(1))[0]

    async def lease_many(self, limit: int) -> list[Lease]:
        """Wait for the next tasks, at least one and at most ``limit`` (the caller's free
        slots): one read and one claim script for all of them. Rides out a Redis outage."""
        limit = max(1, limit)
        backoff = 0.1
        while True:
            try:
                leases = await self._next(limit)
            except BackendUnavailable as exc:
                if not self._outage:
                    logger.warning("waiting for Redis to come back: %s", exc)
                    self._outage = True
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self._outage:
                logger.warning("Redis answers again; taking tasks")
                self._outage = False
            backoff = 0.1
            if leases:
                return leases

    async def _next(self, limit: int) -> list[Lease]:
        try:
            with _unavailable("lease"):
                if not self._group_ready:
                    await self._ensure_group()
                leases: list[Lease] = []
                reclaimed = await self._reclaim_one()
                if reclaimed is not None:
                    leases = await self._claim_all([reclaimed])
                    if limit - len(leases) < 1:
                        return leases
                # what is waiting, taken fairly and claimed in one round trip
                leases += await self._take(limit - len(leases))
                if not leases and reclaimed is None:
                    await self._wait_for_work()
                return leases
        except redis_errors.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream is gone (Redis lost its data): start again
                self._group_ready = False
                self._cursor = "0-0"
                return []
            raise BackendUnavailable(f"Redis refused to hand out work: {exc}") from exc

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self._keys.stream, _GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        await self._prune_consumers()

    async def _prune_consumers(self, *, leaving: bool = False) -> None:
        """Remove the group's consumers that died (idle past ``forget_consumers_after``, with
        nothing pending), and this process's own when ``leaving``."""
        self._next_prune = anyio.current_time() + self._prune_every
        removed = await self._scripts.prune(
            keys=[self._keys.stream],
            args=[_GROUP, self._consumer if leaving else "", self._forget_consumers_ms],
        )
        if int(removed) and not leaving:
            logger.info("removed %d consumers of workers gone from the group", int(removed))

    async def leave(self) -> None:
        """Remove this process's consumer from the group, unless it still holds entries
        (a graceful exit has handed its tasks back; they are then the live workers')."""
        if not self._group_ready:
            return  # this process took no task
        try:
            with _unavailable("leave"):
                await self._prune_consumers(leaving=True)
        except BackendUnavailable as exc:
            logger.warning("could not remove this worker's consumer from the group: %s", exc)

    async def _reclaim_one(self) -> tuple[str, str] | None:
        """Take over one entry whose worker stopped heartbeating, following the cursor."""
        now = anyio.current_time()
        if now < self._next_reclaim:
            return None
        answer = await self._client.xautoclaim(
            self._keys.stream, _GROUP, self._consumer, self._lease_ms, start_id=self._cursor, count=1
        )
        cursor, entries = answer[0], answer[1]
        self._cursor = _text(cursor)
        if self._cursor == "0-0":
            self._next_reclaim = now + min(1.0, self._lease_timeout / 2)
        for entry_id, fields in entries:
            if fields and b"t" in fields:
                return _text(entry_id), _text(fields[b"t"])
        return None

    async def _take(self, limit: int) -> list[Lease]:
        """Up to ``limit`` waiting tasks, round-robin across owners below their cap of
        running tasks, taken and claimed in one script."""
        answers = await self._scripts.take(
            keys=[self._keys.stream, self._keys.counters, self._keys.ring, self._keys.running],
            args=[
                _GROUP,
                self._consumer,
                limit,
                self._keys.task(""),
                self._keys.waiting_prefix,
                self._running_per_owner or 0,
            ],
        )
        return await self._leases([(_text(entry), answer) for entry, answer in answers])

    async def _wait_for_work(self) -> None:
        """Wait until a task may be waiting (a token from its enqueue, or a capped owner's
        end), or the next takeover round is due."""
        wait = max(0.05, min(1.0, self._lease_timeout / 2, self._next_reclaim - anyio.current_time()))
        await self._client.blpop([self._keys.wake], timeout=wait)

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Hand an owner no more than ``limit`` running tasks at once, counted across every
        process on this Redis (``None``: no limit). Tasks go round-robin across owners."""
        self._running_per_owner = limit

    async def _claim_all(self, entries: list[tuple[str, str]]) -> list[Lease]:
        """Claim ``entries`` in one script call; the leases of those that are to run."""
        answers = await self._scripts.claim_many(
            keys=[
                self._keys.stream,
                self._keys.counters,
                self._keys.running,
                *(self._keys.task(task_id) for _, task_id in entries),
            ],
            args=[_GROUP, self._consumer, *(entry for entry, _ in entries)],
        )
        return await self._leases([(entry, answer) for (entry, _), answer in zip(entries, answers, strict=True)])

    async def _leases(self, answers: list[tuple[str, Any]]) -> list[Lease]:
        """The leases of claim.lua's answers (entry id, answer) of those that are to run."""
        leases: list[Lease] = []
        try:
            for entry, answer in answers:
                lease = await self._claimed(entry, answer)
                if lease is not None:
                    leases.append(lease)
        except BaseException:
            # Cancelled (or failed) while handling the answers: the leases not handed out are
            # not kept alive, so that they expire and the tasks run again.
            for lease in leases:
                self._drop(lease)
            raise
        return leases

    async def _claimed(self, entry: str, answer: Any) -> Lease | None:
        """The lease of one claim.lua answer, or None when there is nothing to run."""
        code = int(answer[0])
        if code == 0:
            return None
        record = msgspec.structs.replace(
            _record_decoder.decode(answer[1]),
            attempt=int(answer[2]),
            revision=int(answer[3]),
            cancel_requested=bool(int(answer[4])),
        )
        if code == 2:
            # Finished, but its worker died before acknowledging it: make sure its owner
            # heard of the end (the publish script drops it if it was published already).
            if int(answer[5]) < record.revision:
                try:
                    await self._publish(record)
                except BackendUnavailable as exc:
                    logger.warning("task %s: its final state could not be published: %s", record.id, exc)
            return None
        deliveries = int(answer[5])
        self._held[record.id] = _Held(entry, record.attempt, record.status)
        lease = Lease(record, entry)
        if deliveries > self._max_deliveries:
            await self._dead_letter(lease, deliveries - 1)
            return None
        return lease

    async def _dead_letter(self, lease: Lease, deliveries: int) -> None:
        record = lease.record.evolve(
            status="failed",
            finished_at=utc_now(),
            message="failed",
            error=(
                f"gave up after {deliveries} deliveries: each time, the worker running this task "
                "stopped answering before it finished (it may crash or hang its worker)"
            ),
        )
        logger.error("task %s (%s): %s", record.id, record.kind, record.error)
        if await self.save(lease, record):
            await self._publish(record)
            await self.finish(lease)

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

    async def extend(self, lease: Lease) -> bool:
        with _unavailable("extend"):
            answer = await self._scripts.extend(
                keys=[self._keys.task(lease.record.id), self._keys.stream],
                args=[lease.record.attempt, _GROUP, self._consumer, lease.token],
            )
        return self._extended(lease, answer)

    def _extended(self, lease: Lease, answer: Any) -> bool:
        """What the extend script's ``answer`` means for ``lease``."""
        if not answer:
            self._drop(lease)
            return False
        if int(answer) == 2:
            held = self._held.get(lease.record.id)
            if held is not None and not held.cancel_told:
                held.cancel_told = True
                self._tell_cancel(lease.record.id)
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
                ],
                args=[
                    lease.record.attempt,
                    _record_encoder.encode(record),
                    record.revision,
                    _GROUP,
                    record.id,
                    record.owner,
                ],
            )
        return bool(done)

    async def get(self, task_id: str) -> TaskRecord | None:
        with _unavailable("get"):
            fields = await self._client.hmget(self._keys.task(task_id), ["data", "attempt", "rev", "cancel"])
        return _record_from(fields)

    async def list_by_owner(self, owner: str) -> Sequence[TaskRecord]:
        index = self._keys.owner(owner)
        with _unavailable("list"):
            raw_ids: Any = await self._client.zrevrange(index, 0, 999)
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

    async def watch_cancellations(self) -> AsyncIterator[str]:
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._watchers.add(send)
        try:
            if len(self._watchers) == 1:
                await self._pubsub.subscribe(self._keys.cancel_channel, self._cancel_sub)
            async with receive:
                async for task_id in receive:
                    yield task_id
        finally:
            self._watchers.discard(send)
            send.close()
            if not self._watchers:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await self._pubsub.unsubscribe(self._keys.cancel_channel)

    async def watch_lost_leases(self) -> AsyncIterator[tuple[str, int]]:
        """``(task id, attempt)`` of each lease the heartbeat found taken over (this process
        was paused or cut off past ``lease_timeout``): the worker stops that attempt."""
        send, receive = anyio.create_memory_object_stream[tuple[str, int]](math.inf)
        self._loss_watchers.add(send)
        try:
            async with receive:
                async for lost in receive:
                    yield lost
        finally:
            self._loss_watchers.discard(send)
            send.close()

    async def statistics(self) -> QueueStatistics:
        with _unavailable("statistics"):
            queued, running = await self._client.hmget(self._keys.counters, ["queued", "running"])
        return QueueStatistics(queued=max(0, int(queued or 0)), running=max(0, int(running or 0)))

    def _tell_cancel(self, task_id: str) -> None:
        if task_id not in self._held:
            return  # not running in this process
        for watcher in tuple(self._watchers):
            watcher.send_nowait(task_id)

    def _drop(self, lease: Lease) -> None:
        held = self._held.get(lease.record.id)
        if held is not None and held.attempt == lease.record.attempt:
            del self._held[lease.record.id]

    async def _heartbeat(self) -> None:
        """Extend every held lease every ``lease_timeout / 3`` seconds."""
        interval = self._lease_timeout / 3
        while True:
            await anyio.sleep(interval)
            if self._group_ready and anyio.current_time() >= self._next_prune:
                try:
                    with _unavailable("prune"):
                        await self._prune_consumers()
                except BackendUnavailable as exc:
                    logger.warning("could not remove dead consumers: %s", exc)
            leases = [Lease(_placeholder(task_id, held.attempt), held.entry) for task_id, held in self._held.items()]
            if not leases:
                continue
            try:  # every held lease in one round trip
                with _unavailable("extend"):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for lease in leases:
                            await self._scripts.extend(
                                keys=[self._keys.task(lease.record.id), self._keys.stream],
                                args=[lease.record.attempt, _GROUP, self._consumer, lease.token],
                                client=pipe,
                            )
                        answers = await pipe.execute(raise_on_error=False)
            except BackendUnavailable as exc:
                logger.warning("heartbeat of %d tasks failed: %s", len(leases), exc)
                continue
            for lease, answer in zip(leases, answers, strict=True):
                held = self._held.get(lease.record.id)
                if held is None or held.attempt != lease.record.attempt:
                    continue  # it finished (or was handed back) while the heartbeat was on its way
                if isinstance(answer, Exception):
                    logger.warning("heartbeat of task %s failed: %s", lease.record.id, answer)
                elif not self._extended(lease, answer):
                    logger.warning("task %s: lease of attempt %d was taken over", lease.record.id, lease.record.attempt)
                    for watcher in tuple(self._loss_watchers):
                        watcher.send_nowait((lease.record.id, lease.record.attempt))


def _placeholder(task_id: str, attempt: int) -> TaskRecord:
    return TaskRecord(id=task_id, kind="", name="", owner="", attempt=attempt)


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


# --- registry -------------------------------------------------------------------------
