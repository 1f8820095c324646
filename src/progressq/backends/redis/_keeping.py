"""Keeping the leases this process holds: heartbeat, lost leases, cancellations, consumers."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import contextmanager
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

    __slots__ = ("attempt", "cancel_told", "committed", "entry", "shard", "status", "whole")

    def __init__(self, entry: str, attempt: int, status: str, shard: int) -> None:
        self.entry = entry
        self.attempt = attempt
        self.status = status  # as this attempt last stored it (or as taken)
        self.shard = shard
        self.cancel_told = False
        self.committed = False  # a commit of this attempt was stored
        self.whole: TaskRecord | None = None  # the record this attempt last stored whole


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
    _cancel_subscribed: set[int]
    _forget_consumers_ms: int
    _presence_busy: bool
    _prune_every: float
    _next_prune: float

    async def _prune_consumers(self, *, leaving: bool = False) -> None:
        """Remove the group's consumers that died (idle past ``forget_consumers_after``, with
        nothing pending), and this process's own when ``leaving``. Every shard at once, each
        within its deadline, so that a hung master holds up only its own; the first failure
        is raised once all are done."""
        self._next_prune = anyio.current_time() + self._prune_every
        removed = 0
        failures: list[BaseException] = []

        async def prune(index: int) -> None:
            nonlocal removed
            call = self._calls[index].prune(self._consumer if leaving else "", self._forget_consumers_ms)
            try:
                with _unavailable("prune"), _within(self._shard_deadline, f"prune of shard {index}"):
                    removed += int(await call.run())
            except BackendUnavailable as exc:
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for shard in self._taking:
                if shard.group_ready:
                    group.start_soon(prune, shard.index)
        if removed and not leaving:
            logger.info("removed %d consumers of workers gone from the group", removed)
        if failures:
            raise failures[0]

    @property
    def _shard_deadline(self) -> float:
        """How long one shard's heartbeat step may take, with several shards: the heartbeat's
        interval, so that a hung master never delays the next beat of the others. With one
        shard there are no others to protect: no deadline (a slow beat is better than none)."""
        return self._lease_timeout / 3 if len(self._keys) > 1 else math.inf

    async def _seen(self) -> None:
        """Mark this process as a live worker (``statistics().workers`` counts those seen
        within the lease timeout), and forget the workers not seen for much longer."""
        now_ms = int(time.time() * 1000)
        with _within(self._shard_deadline, "worker presence"):
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
        # ``receive`` is closed however this ends, even while the first subscription is made
        # (a shutdown that cancels it, a shard that fails it).
        with receive:
            try:
                if len(self._watchers) == 1:
                    await self._subscribe_cancellations()
                async for task_id in receive:
                    yield task_id
            finally:
                self._watchers.discard(send)
                send.close()
                if not self._watchers:
                    subscribed, self._cancel_subscribed = self._cancel_subscribed, set()
                    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                        for index in subscribed:
                            await self._pubsubs[index].unsubscribe(self._keys[index].cancel_channel)

    async def _subscribe_cancellations(self) -> None:
        """Subscribe each shard's cancellations on the shard's connection, every shard at once
        and each within its deadline: a shard that does not answer is left out, not the others,
        and the heartbeat tries it again while anyone watches. (Its running tasks' cancellations
        also reach them through the heartbeat's extend answers meanwhile.)"""

        async def subscribe(index: int) -> None:
            try:
                with _within(self._shard_deadline, f"cancellations of shard {index}"):
                    await self._pubsubs[index].subscribe(self._keys[index].cancel_channel, self._cancel_sub)
            except BackendUnavailable as exc:
                backend_outage.failed(f"listening for cancellations on shard {index}", exc)  # logged once
                return
            if self._watchers:
                self._cancel_subscribed.add(index)
            else:  # the last watcher left meanwhile
                await self._pubsubs[index].unsubscribe(self._keys[index].cancel_channel)

        async with anyio.create_task_group() as group:
            for index in range(len(self._keys)):
                if index not in self._cancel_subscribed:
                    group.start_soon(subscribe, index)

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
        """Extend every held lease every ``lease_timeout / 3`` seconds, each shard's on its
        own and within its deadline (a hung master must not let the others' leases expire);
        the worker's presence, the pruning of dead consumers and missing cancellation
        subscriptions go beside it, never in its way."""
        interval = self._lease_timeout / 3
        next_beat = anyio.current_time()
        async with anyio.create_task_group() as chores:
            while True:
                next_beat += interval
                await anyio.sleep(max(0.0, next_beat - anyio.current_time()))
                next_beat = max(next_beat, anyio.current_time())
                if self._taking_started:
                    chores.start_soon(_guarded, self._keep_presence(), "marking this worker alive")
                if self._watchers and len(self._cancel_subscribed) < len(self._keys):
                    chores.start_soon(_guarded, self._subscribe_cancellations(), "listening for cancellations")
                by_shard: dict[int, list[tuple[str, _Held]]] = {}
                for task_id, held in list(self._held.items()):
                    by_shard.setdefault(held.shard, []).append((task_id, held))
                async with anyio.create_task_group() as beats:
                    for index, held_now in by_shard.items():
                        beats.start_soon(_guarded, self._beat_shard(index, held_now), f"a heartbeat of shard {index}")

    async def _keep_presence(self) -> None:
        """Mark this worker alive and, when due, prune the dead consumers (once at a time)."""
        if self._presence_busy:
            return  # the last one still waits for a hung master
        self._presence_busy = True
        try:
            try:
                with _unavailable("worker presence"):
                    await self._seen()
            except BackendUnavailable as exc:
                backend_outage.failed("marking this worker alive", exc)  # logged once per outage
            if anyio.current_time() >= self._next_prune:
                try:
                    await self._prune_consumers()
                except BackendUnavailable as exc:
                    logger.warning("could not remove dead consumers: %s", exc)
        finally:
            self._presence_busy = False

    async def _beat_shard(self, index: int, held_now: list[tuple[str, _Held]]) -> None:
        """Extend the leases held on one shard, in one round trip, within the shard's deadline."""
        leases = [Lease(_placeholder(task_id, held.attempt), held.entry) for task_id, held in held_now]
        calls = [
            self._calls[index].extend(task_id, held.attempt, self._consumer, held.entry) for task_id, held in held_now
        ]
        try:
            with _unavailable("extend"), _within(self._shard_deadline, f"heartbeat of shard {index}"):
                answers = await self._run_all(calls)
        except BackendUnavailable as exc:
            backend_outage.failed(f"a heartbeat of {len(leases)} tasks on shard {index}", exc)  # logged once per outage
            return
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


async def _guarded(chore: Coroutine[Any, Any, None], what: str) -> None:
    """Run one of the heartbeat's chores; an error it did not expect is a failed round (logged
    once per outage), never the end of the heartbeat: mid-failover, redis-py's cluster client
    raises errors of its own (``AttributeError`` from a pipeline whose slot has no node yet)."""
    try:
        await chore
    except Exception as exc:
        backend_outage.failed(what, exc)


@contextmanager
def _within(seconds: float, what: str) -> Iterator[None]:
    """Give up on a Redis call after ``seconds``, as on an outage (``BackendUnavailable``):
    a hung master answers nothing, and its connection's own timeout is far longer."""
    with anyio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise BackendUnavailable(f"Redis did not answer within {seconds:g} s ({what})")


def _placeholder(task_id: str, attempt: int) -> TaskRecord:
    return TaskRecord(id=task_id, kind="", name="", owner="", attempt=attempt)
