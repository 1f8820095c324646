"""The Redis backend: any number of web and worker processes on one Redis.

``RedisBackend.from_url("redis://localhost:6379/0")`` is a queue and a registry sharing one
client and one key prefix. Needs the ``redis`` extra (redis-py 5 or later) and Redis 6.2 or
later. redis-py's asyncio client runs on asyncio only, so this backend does too (the memory
backend also runs on trio).

**Queue.** Tasks go through a Redis Stream read by one consumer group. A lease is the
stream entry pending with the worker's consumer; the backend keeps it alive with heartbeats
(every ``lease_timeout / 3`` seconds) for as long as the worker holds it. An entry idle for
``lease_timeout`` (its worker died or stalled) is reclaimed with ``XAUTOCLAIM`` by the next
worker that looks for work. Taking an entry bumps the task's ``attempt`` atomically, and
every write (``save``, ``release``, ``finish``, ``extend``) carries the attempt and is refused
once another one took over: a worker that lost its lease can no longer change its task. A
task delivered more than ``max_deliveries`` times without an outcome is ``failed`` with an
error saying so, and its owner is told. Records of finished tasks expire after
``retention`` seconds.

**Registry.** Each identity has a sequence counter and a history stream (``history_size``
events, forgotten ``history_ttl`` seconds after the identity's last event); one Lua script
numbers an event, stores it and publishes it on the identity's channel, so publish order is
seq order. Each process subscribes only to the channels of identities attached in it,
over one shared pub/sub connection. After that connection is lost it reconnects,
resubscribes and fills any gap from the history, so every sink sees seq without gaps.

An event about a task whose stored state has moved on (a newer revision exists, or this
revision was already published) is dropped by the publish script: nothing a fenced-out
worker had in flight reaches a client, and no state is published twice.

Redis errors surface as :class:`~progressq.errors.BackendUnavailable`; ``lease`` instead
waits for Redis to come back, so workers ride out an outage.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.resources import files
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectSendStream
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from progressq.contracts import (
    Backend,
    CancelOutcome,
    ClientRegistry,
    Event,
    EventSink,
    Lease,
    QueueStatistics,
    RegistryStatistics,
    TaskQueue,
    TaskRecord,
    utc_now,
)
from progressq.errors import BackendUnavailable, ConfigurationError, QueueFull
from progressq.messages import EventType

__all__ = ("RedisBackend", "RedisClientRegistry", "RedisTaskQueue")

logger = logging.getLogger("progressq.redis")

_GROUP = "workers"
_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)
_EVENT_KINDS: dict[bytes, EventType] = {b"taskQueued": "taskQueued", b"taskProgress": "taskProgress"}
_record_decoder = msgspec.json.Decoder(TaskRecord)
_record_encoder = msgspec.json.Encoder()


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Turn a Redis connection failure into ``BackendUnavailable``."""
    try:
        yield
    except _REDIS_ERRORS as exc:
        raise BackendUnavailable(f"Redis did not answer ({what}): {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Scripts:
    """The Lua scripts shipped next to this module, registered on one client."""

    def __init__(self, client: Redis) -> None:
        folder = files("progressq.backends").joinpath("_redis")

        def load(name: str) -> AsyncScript:
            return client.register_script(folder.joinpath(f"{name}.lua").read_text(encoding="utf-8"))

        self.enqueue = load("enqueue")
        self.claim = load("claim")
        self.save = load("save")
        self.release = load("release")
        self.finish = load("finish")
        self.extend = load("extend")
        self.cancel = load("cancel")
        self.publish = load("publish")


class _Keys:
    """Every key and channel name, under one prefix."""

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigurationError("the key prefix must be a non-empty string without spaces")
        self.prefix = prefix
        self.stream = f"{prefix}:queue"
        self.counters = f"{prefix}:counters"
        self.cancel_channel = f"{prefix}:cancel"
        self.unfinished = f"{prefix}:unfinished"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    def seq(self, identity: str) -> str:
        return f"{self.prefix}:seq:{identity}"

    def history(self, identity: str) -> str:
        return f"{self.prefix}:history:{identity}"

    def channel(self, identity: str) -> str:
        return f"{self.prefix}:events:{identity}"


# --- pub/sub --------------------------------------------------------------------------


class _Subscription:
    """What the shared pub/sub connection calls for one channel."""

    async def confirmed(self) -> None:
        """The subscription is live (first time, or again after a reconnect)."""

    async def message(self, data: bytes) -> None:
        """One message arrived on the channel."""


class _PubSub:
    """One pub/sub connection per backend, shared by every channel this process listens to.

    A lost connection is replaced and every channel subscribed again; each subscription's
    ``confirmed`` runs again so that it can fill what it missed.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub = client.pubsub()
        self._subs: dict[bytes, _Subscription] = {}
        self._wake = anyio.Event()
        # redis-py's PubSub opens its connection on the first command: two concurrent first
        # subscribes would each open one and lose a confirmation. One command at a time.
        self._lock = anyio.Lock()

    async def subscribe(self, channel: str, sub: _Subscription) -> None:
        name = channel.encode()
        self._subs[name] = sub
        try:
            with _unavailable("subscribe"):
                async with self._lock:
                    await self._pubsub.subscribe(name)
        except BaseException:
            if self._subs.get(name) is sub:
                del self._subs[name]
            raise
        self._wake.set()

    async def unsubscribe(self, channel: str) -> None:
        name = channel.encode()
        self._subs.pop(name, None)
        # On failure, a new connection subscribes only to what is still wanted.
        with suppress(*_REDIS_ERRORS):
            async with self._lock:
                await self._pubsub.unsubscribe(name)

    async def run(self) -> None:
        backoff = 0.05
        broken = False
        while True:
            if broken:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                broken = not await self._reconnect()
                continue
            if not self._subs or self._pubsub.connection is None:
                self._wake = anyio.Event()
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    await self._dispatch(message)
                backoff = 0.05
            except (*_REDIS_ERRORS, BackendUnavailable) as exc:
                logger.warning("pub/sub connection lost (%s); reconnecting", exc)
                broken = True
            except Exception:
                logger.exception("pub/sub: a message could not be handled")

    async def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        sub = self._subs.get(channel) if isinstance(channel, bytes) else None
        if sub is None:
            return
        kind = message.get("type")
        if kind == "subscribe":
            await sub.confirmed()
        elif kind == "message":
            data = message.get("data")
            if isinstance(data, bytes):
                await sub.message(data)

    async def _reconnect(self) -> bool:
        """A new connection subscribed to every wanted channel; False if Redis is not back yet."""
        async with self._lock:
            return await self._reconnect_locked()

    async def _reconnect_locked(self) -> bool:
        old, self._pubsub = self._pubsub, self._client.pubsub()
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), suppress(Exception):  # broken already
            await old.aclose()  # type: ignore[no-untyped-call]
        channels = list(self._subs)
        if not channels:
            return True
        try:
            await self._pubsub.subscribe(*channels)
        except _REDIS_ERRORS as exc:
            logger.warning("pub/sub: Redis is not back yet (%s)", exc)
            return False
        logger.warning("pub/sub: connected again, %d channels subscribed", len(channels))
        return True

    async def aclose(self) -> None:
        self._subs.clear()
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0), suppress(Exception):  # closing anyway
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]


# --- queue ----------------------------------------------------------------------------


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
        publish: Callable[[TaskRecord], Awaitable[object]],
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._keys = keys
        self._pubsub = pubsub
        self._capacity = capacity or 0
        self._retention = max(1, math.ceil(retention))
        self._lease_ms = max(1, int(lease_timeout * 1000))
        self._lease_timeout = lease_timeout
        self._max_deliveries = max_deliveries
        self._consumer = consumer
        self._publish = publish
        self._held: dict[str, _Held] = {}
        self._watchers: set[MemoryObjectSendStream[str]] = set()
        self._cancel_sub = _CancelSubscription(self)
        self._group_ready = False
        self._cursor = "0-0"
        self._next_reclaim = -math.inf
        self._outage = False

    @property
    def consumer(self) -> str:
        """This process's consumer name in the stream's group."""
        return self._consumer

    async def enqueue(self, record: TaskRecord) -> None:
        created_ms = int(record.created_at.timestamp() * 1000)
        with _unavailable("enqueue"):
            done = await self._scripts.enqueue(
                keys=[
                    self._keys.task(record.id),
                    self._keys.owner(record.owner),
                    self._keys.counters,
                    self._keys.stream,
                    self._keys.unfinished,
                ],
                args=[
                    record.id,
                    _record_encoder.encode(record),
                    record.owner,
                    created_ms,
                    record.revision,
                    self._capacity,
                    self._retention,
                ],
            )
        if done == 0:
            raise QueueFull(retry_after=1.0)
        if done == -1:
            raise ConfigurationError(f"a task with id {record.id!r} already exists")

    async def lease(self) -> Lease:
        """Wait for the next task; rides out a Redis outage (logs, then retries)."""
        backoff = 0.1
        while True:
            try:
                lease = await self._next()
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
            if lease is not None:
                return lease

    async def _next(self) -> Lease | None:
        try:
            with _unavailable("lease"):
                if not self._group_ready:
                    await self._ensure_group()
                entry = await self._reclaim_one()
                if entry is None:
                    entry = await self._read_one()
                if entry is None:
                    return None
                return await self._claim(*entry)
        except redis_errors.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream is gone (Redis lost its data): start again
                self._group_ready = False
                self._cursor = "0-0"
                return None
            raise BackendUnavailable(f"Redis refused to hand out work: {exc}") from exc

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self._keys.stream, _GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

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

    async def _read_one(self) -> tuple[str, str] | None:
        wait = max(0.05, min(1.0, self._lease_timeout / 2, self._next_reclaim - anyio.current_time()))
        try:
            answer = await self._client.xreadgroup(
                _GROUP, self._consumer, {self._keys.stream: ">"}, count=1, block=int(wait * 1000)
            )
        except redis_errors.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._group_ready = False
                self._cursor = "0-0"
                return None
            raise
        streams: Any = answer or []
        for _stream, entries in streams:
            for entry_id, fields in entries:
                if fields and b"t" in fields:
                    return _text(entry_id), _text(fields[b"t"])
        return None

    async def _claim(self, entry: str, task_id: str) -> Lease | None:
        answer = await self._scripts.claim(
            keys=[self._keys.task(task_id), self._keys.stream, self._keys.counters],
            args=[_GROUP, self._consumer, entry],
        )
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
                await self._publish(record)
            return None
        deliveries = int(answer[5])
        self._held[task_id] = _Held(entry, record.attempt, record.status)
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

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        held = self._held.get(record.id)
        try:
            with _unavailable("save"):
                stored = await self._scripts.save(
                    keys=[
                        self._keys.task(record.id),
                        self._keys.counters,
                        self._keys.owner(record.owner),
                        self._keys.unfinished,
                    ],
                    args=[
                        lease.record.attempt,
                        _record_encoder.encode(record),
                        record.revision,
                        record.status,
                        1 if record.finished else 0,
                        self._retention,
                        self._keys.cancel_channel,
                        record.id,
                        record.owner,
                    ],
                )
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

    async def extend(self, lease: Lease) -> bool:
        with _unavailable("extend"):
            answer = await self._scripts.extend(
                keys=[self._keys.task(lease.record.id), self._keys.stream],
                args=[lease.record.attempt, _GROUP, self._consumer, lease.token],
            )
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
                keys=[self._keys.task(record.id), self._keys.stream, self._keys.counters],
                args=[lease.record.attempt, _record_encoder.encode(record), record.revision, _GROUP, record.id],
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
                    keys=[key, self._keys.counters, self._keys.owner(owner), self._keys.unfinished],
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
            for task_id, held in list(self._held.items()):
                lease = Lease(_placeholder(task_id, held.attempt), held.entry)
                try:
                    if not await self.extend(lease):
                        logger.warning("task %s: lease of attempt %d was taken over", task_id, held.attempt)
                except BackendUnavailable as exc:
                    logger.warning("heartbeat of task %s failed: %s", task_id, exc)
                    break


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


class _Identity(_Subscription):
    """The live state of one identity attached in this process."""

    def __init__(self, registry: RedisClientRegistry, identity: str) -> None:
        self.registry = registry
        self.identity = identity
        self.sinks: set[EventSink] = set()
        self.last: int | None = None  # last seq delivered to the sinks
        self.ready = anyio.Event()

    async def confirmed(self) -> None:
        if self.last is None:
            self.last = await self.registry.current_seq(self.identity)
            self.ready.set()
        else:  # subscribed again after a lost connection: fetch what was missed
            await self._fill()

    async def message(self, data: bytes) -> None:
        if self.last is None:
            return
        seq_text, rev_text, kind_text, length_text, rest = data.split(b":", 4)
        seq = int(seq_text)
        if seq <= self.last:
            return
        if seq > self.last + 1:
            await self._fill()
            if seq <= self.last:
                return
            if seq > self.last + 1:
                logger.warning(
                    "identity %s: events %d to %d are no longer in the history", self.identity, self.last + 1, seq - 1
                )
        length = int(length_text)
        self._deliver(Event(seq, _EVENT_KINDS[kind_text], rest[:length].decode(), int(rev_text), rest[length:]))

    async def _fill(self) -> None:
        assert self.last is not None
        events = await self.registry.events_after(self.identity, self.last)
        if events is None:
            return
        for event in events:
            if event.seq > self.last:
                self._deliver(event)

    def _deliver(self, event: Event) -> None:
        self.last = event.seq
        for sink in tuple(self.sinks):
            try:
                sink.deliver(event)
            except Exception:
                logger.exception("a sink of identity %s failed to take event %d", self.identity, event.seq)


class RedisClientRegistry:
    """Sequencing, history and live delivery on Redis. Made by :class:`RedisBackend`."""

    def __init__(
        self,
        client: Redis,
        scripts: _Scripts,
        keys: _Keys,
        pubsub: _PubSub,
        *,
        history_size: int,
        history_ttl: float,
        attach_timeout: float,
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._keys = keys
        self._pubsub = pubsub
        self._history_size = history_size
        self._history_ttl = max(1, math.ceil(history_ttl))
        self._attach_timeout = attach_timeout
        self._identities: dict[str, _Identity] = {}

    async def publish(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> Event:
        """Number, store and publish one event.

        Returns the event; its ``seq`` is 0 when it was dropped because its task has
        moved on (a newer revision is stored, or this one was already published).
        """
        with _unavailable("publish"):
            seq = await self._scripts.publish(
                keys=[self._keys.seq(identity), self._keys.history(identity), self._keys.task(task_id)],
                args=[
                    kind,
                    task_id,
                    revision,
                    task_json,
                    self._history_size,
                    self._history_ttl,
                    self._keys.channel(identity),
                ],
            )
        return Event(int(seq), kind, task_id, revision, task_json)

    async def attach(self, identity: str, sink: EventSink) -> None:
        state = self._identities.get(identity)
        created = state is None
        if state is None:
            state = self._identities[identity] = _Identity(self, identity)
        state.sinks.add(sink)
        try:
            if created:
                await self._pubsub.subscribe(self._keys.channel(identity), state)
            with anyio.fail_after(self._attach_timeout):
                await state.ready.wait()
        except TimeoutError as exc:
            await self.detach(identity, sink)
            raise BackendUnavailable("Redis did not confirm the subscription") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.detach(identity, sink)
            raise

    async def detach(self, identity: str, sink: EventSink) -> None:
        state = self._identities.get(identity)
        if state is None:
            return
        state.sinks.discard(sink)
        if not state.sinks:
            del self._identities[identity]
            await self._pubsub.unsubscribe(self._keys.channel(identity))

    async def current_seq(self, identity: str) -> int:
        with _unavailable("current_seq"):
            value = await self._client.get(self._keys.seq(identity))
        return int(value or 0)

    async def events_after(self, identity: str, seq: int) -> Sequence[Event] | None:
        with _unavailable("events_after"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.seq(identity))
                pipe.xrange(self._keys.history(identity), min=f"{seq + 1}-0", max="+")
                current_raw, entries = await pipe.execute()
        current = int(current_raw or 0)
        if seq > current:
            return None  # the client knows of events this history does not
        if seq == current:
            return []
        events = [_event_from(entry_id, fields) for entry_id, fields in entries]
        events = [event for event in events if event.seq <= current]
        if len(events) != current - seq or events[0].seq != seq + 1:
            return None
        return events

    def statistics(self) -> RegistryStatistics:
        connections = sum(len(state.sinks) for state in self._identities.values())
        return RegistryStatistics(connections=connections, clients=len(self._identities))


def _event_from(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
    seq = int(_text(entry_id).partition("-")[0])
    return Event(seq, _EVENT_KINDS[fields[b"k"]], fields[b"t"].decode(), int(fields[b"r"]), fields[b"j"])


# --- the backend ----------------------------------------------------------------------


class RedisBackend:
    """Queue and registry on one Redis, for many web and worker processes.

    Open it for the application's lifetime (the Hub does): ``async with backend: ...``.

    Args:
        client: a ``redis.asyncio.Redis`` made with ``decode_responses=False`` (the default).
        prefix: every key and channel starts with ``prefix:``; apps sharing a Redis use
            different prefixes.
        capacity: most tasks waiting at once (``enqueue`` raises ``QueueFull`` beyond it);
            ``None`` for no limit.
        retention: seconds a finished task's record stays readable and listed.
        history_size: events kept per identity for resuming (approximately: at least this many).
        history_ttl: seconds an identity's history and seq outlive its last event.
        lease_timeout: seconds without a heartbeat after which a running task is taken
            over by another worker. Heartbeats go every third of it.
        max_deliveries: deliveries of one task without an outcome (its workers died or
            stalled) before it is ``failed`` instead of run again.
        consumer: this process's name in the workers' group; host, pid and a random
            suffix when omitted.
        attach_timeout: seconds ``attach`` waits for Redis to confirm a subscription.
        close_client: close ``client`` when the backend closes (``from_url`` sets it).
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "progressq",
        capacity: int | None = None,
        retention: float = 86_400.0,
        history_size: int = 1000,
        history_ttl: float = 86_400.0,
        lease_timeout: float = 30.0,
        max_deliveries: int = 5,
        consumer: str | None = None,
        attach_timeout: float = 10.0,
        close_client: bool = False,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError("the Redis backend needs a client made with decode_responses=False")
        if capacity is not None and capacity < 1:
            raise ConfigurationError("capacity must be >= 1 or None")
        if retention <= 0 or history_ttl <= 0 or lease_timeout <= 0 or attach_timeout <= 0:
            raise ConfigurationError("retention, history_ttl, lease_timeout and attach_timeout must be > 0")
        if history_size < 1 or max_deliveries < 1:
            raise ConfigurationError("history_size and max_deliveries must be >= 1")
        self.client = client
        self.prefix = prefix
        self._keys = _Keys(prefix)
        self._close_client = close_client
        self._url: str | None = None
        scripts = _Scripts(client)
        self._pubsub = _PubSub(client)
        self._registry = RedisClientRegistry(
            client, scripts, self._keys, self._pubsub, history_size=history_size, history_ttl=history_ttl,
            attach_timeout=attach_timeout,
        )  # fmt: skip
        self._queue = RedisTaskQueue(
            client,
            scripts,
            self._keys,
            self._pubsub,
            capacity=capacity,
            retention=retention,
            lease_timeout=lease_timeout,
            max_deliveries=max_deliveries,
            consumer=consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            publish=self._publish_record,
        )
        self._group: anyio.abc.TaskGroup | None = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "progressq", **options: Any) -> RedisBackend:
        """A backend with its own client for ``url`` (``redis://[:password@]host:port/db``,
        ``rediss://`` for TLS, ``unix://``), closed with the backend.

        ``options`` are the keyword arguments of :class:`RedisBackend` (``capacity``,
        ``lease_timeout``, ...).
        """
        try:
            client = Redis.from_url(
                url,
                decode_responses=False,
                socket_connect_timeout=5.0,
                socket_timeout=15.0,  # above the longest blocking read (1 s)
                health_check_interval=10,
            )
        except ValueError as exc:
            raise ConfigurationError(f"not a Redis URL: {_redacted(url)!r} ({exc})") from exc
        backend = cls(client, prefix=prefix, close_client=True, **options)
        backend._url = url
        return backend

    @property
    def url(self) -> str:
        """Where this backend's Redis is, without a password."""
        if self._url is not None:
            return _redacted(self._url)
        kwargs = self.client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"

    @property
    def queue(self) -> RedisTaskQueue:
        return self._queue

    @property
    def registry(self) -> RedisClientRegistry:
        return self._registry

    async def ping(self) -> bool:
        """True when Redis answers; False (never an exception) when it does not."""
        try:
            with anyio.fail_after(2.0):
                return bool(await self.client.ping())
        except Exception:
            return False

    async def __aenter__(self) -> RedisBackend:
        try:
            import asyncio

            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError("the Redis backend runs on asyncio only (redis-py's client needs it)") from None
        if self._group is not None:
            raise ConfigurationError("this backend is already open")
        group = anyio.create_task_group()
        await group.__aenter__()
        group.start_soon(self._pubsub.run)
        group.start_soon(self._queue._heartbeat)
        self._group = group
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and heartbeating; close the client if the backend made it."""
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        await self._pubsub.aclose()
        if self._close_client:
            with anyio.CancelScope(shield=True):
                await self.client.aclose()

    def __repr__(self) -> str:
        return f"RedisBackend({self.url}, prefix={self.prefix!r})"

    async def _publish_record(self, record: TaskRecord) -> None:
        await self._registry.publish(record.owner, "taskProgress", record.id, record.revision, record.view_json())


if TYPE_CHECKING:  # mypy proves that the Redis backend satisfies the contracts
    _backend: Backend = cast(RedisBackend, None)
    _queue: TaskQueue = cast(RedisTaskQueue, None)
    _registry: ClientRegistry = cast(RedisClientRegistry, None)
