"""Keeping the leases this process holds: heartbeat, lost leases, cancellations, consumers."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from redis import exceptions as redis_errors

from progressq._outage import backend_outage
from progressq.backends.redis._calls import _Call, _Calls
from progressq.backends.redis._common import _Client, _Keys, _unavailable
from progressq.backends.redis._pubsub import _PubSub, _Subscription
from progressq.contracts import Lease, TaskRecord
from progressq.errors import BackendUnavailable

if TYPE_CHECKING:
    from progressq.backends.redis._taking import _ShardTaking

logger = logging.getLogger("progressq.redis")


class _Held:
    """A lease this process holds, kept alive by the heartbeat."""

    __slots__ = ("attempt", "cancel_told", "entry", "shard", "status")

    def __init__(self, entry: str, attempt: int, status: str, shard: int) -> None:
        self.entry = entry
        self.attempt = attempt
        self.status = status
        self.shard = shard
        self.cancel_told = False


class _CancelSubscription(_Subscription):
    def __init__(self, keeper: _LeaseKeeping) -> None:
        self._keeper = keeper

    async def message(self, data: bytes) -> None:
        self._keeper._tell_cancel(data.decode())


class _LeaseKeeping:
    """The part of :class:`RedisTaskQueue` that keeps its leases alive and tells its workers
    what became of them (taken over, cancel asked), and that keeps the group's consumers to
    the live ones. The queue sets these attributes up."""

    _client: _Client
    _calls: Sequence[_Calls]
    _keys: Sequence[_Keys]
    _consumer: str
    _lease_timeout: float
    _held: dict[str, _Held]
    _taking: list[_ShardTaking]
    _taking_started: bool
    _pubsubs: Sequence[_PubSub]
    _watchers: set[MemoryObjectSendStream[str]]
    _loss_watchers: set[MemoryObjectSendStream[tuple[str, int]]]
    _cancel_sub: _CancelSubscription
    _forget_consumers_ms: int
    _prune_every: float
    _next_prune: float

    async def _prune_consumers(self, *, leaving: bool = False) -> None:
        """Remove the group's consumers that died (idle past ``forget_consumers_after``, with
        nothing pending), and this process's own when ``leaving``."""
        self._next_prune = anyio.current_time() + self._prune_every
        removed = 0
        for shard in self._taking:
            if shard.group_ready:
                prune = self._calls[shard.index].prune(self._consumer if leaving else "", self._forget_consumers_ms)
                removed += int(await prune.run())
        if removed and not leaving:
            logger.info("removed %d consumers of workers gone from the group", removed)

    async def _seen(self) -> None:
        """Mark this process as a live worker (``statistics().workers`` counts those seen
        within the lease timeout), and forget the workers not seen for much longer."""
        now_ms = int(time.time() * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys[0].workers, {self._consumer: now_ms})
            pipe.zremrangebyscore(self._keys[0].workers, "-inf", now_ms - self._forget_consumers_ms)
            await pipe.execute()

    async def leave(self) -> None:
        """Remove this process's consumer from the group, unless it still holds entries
        (a graceful exit has handed its tasks back; they are then the live workers')."""
        if not self._taking_started:
            return  # this process took no task
        try:
            with _unavailable("leave"):
                await self._client.zrem(self._keys[0].workers, self._consumer)
                await self._prune_consumers(leaving=True)
        except BackendUnavailable as exc:
            logger.warning("could not remove this worker's consumer from the group: %s", exc)

    async def extend(self, lease: Lease) -> bool:
        calls = self._calls[self._shard_of(lease.record.owner)]
        with _unavailable("extend"):
            answer = await calls.extend(lease.record.id, lease.record.attempt, self._consumer, lease.token).run()
        return self._extended(lease, answer)

    if TYPE_CHECKING:

        def _shard_of(self, owner: str) -> int: ...

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

    async def watch_cancellations(self) -> AsyncIterator[str]:
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._watchers.add(send)
        try:
            if len(self._watchers) == 1:  # each shard's cancellations, on the shard's connection
                for keys, pubsub in zip(self._keys, self._pubsubs, strict=True):
                    await pubsub.subscribe(keys.cancel_channel, self._cancel_sub)
            async with receive:
                async for task_id in receive:
                    yield task_id
        finally:
            self._watchers.discard(send)
            send.close()
            if not self._watchers:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    for keys, pubsub in zip(self._keys, self._pubsubs, strict=True):
                        await pubsub.unsubscribe(keys.cancel_channel)

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
            if self._taking_started:  # this process's workers take tasks: it is seen alive
                try:
                    with _unavailable("worker presence"):
                        await self._seen()
                except BackendUnavailable as exc:
                    backend_outage.failed("marking this worker alive", exc)  # logged once per outage
            if self._taking_started and anyio.current_time() >= self._next_prune:
                try:
                    with _unavailable("prune"):
                        await self._prune_consumers()
                except BackendUnavailable as exc:
                    logger.warning("could not remove dead consumers: %s", exc)
            held_now = list(self._held.items())
            if not held_now:
                continue
            leases = [Lease(_placeholder(task_id, held.attempt), held.entry) for task_id, held in held_now]
            calls = [
                self._calls[held.shard].extend(task_id, held.attempt, self._consumer, held.entry)
                for task_id, held in held_now
            ]
            try:  # every held lease in one round trip (one per node on Redis Cluster)
                with _unavailable("extend"):
                    answers = await self._run_all(calls)
            except BackendUnavailable as exc:
                backend_outage.failed(f"a heartbeat of {len(leases)} tasks", exc)  # logged once per outage
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

    async def _run_all(self, calls: list[_Call]) -> list[Any]:
        """Run script calls in one pipeline; an answer is the call's error where it failed.
        A call whose script Redis lost (a restart, a failover) is run again, loading it."""
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                call.queue_on(pipe)
            answers: list[Any] = await pipe.execute(raise_on_error=False)
        for n, (call, answer) in enumerate(zip(calls, answers, strict=True)):
            if isinstance(answer, redis_errors.NoScriptError):
                try:
                    answers[n] = await call.run()
                except redis_errors.RedisError as exc:
                    answers[n] = exc
        return answers


def _placeholder(task_id: str, attempt: int) -> TaskRecord:
    return TaskRecord(id=task_id, kind="", name="", owner="", attempt=attempt)
