"""Shared pieces of the Redis backend: keys, scripts, errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from progressq._logonce import LogOnce
from progressq.contracts import (
    TaskRecord,
)
from progressq.errors import BackendUnavailable, ConfigurationError
from progressq.messages import EventType

logger = logging.getLogger("progressq.redis")


_Client = Redis | RedisCluster  # a single Redis's client, or Redis Cluster's


def _loose(client: _Client) -> Any:
    """``client``, for a call whose types the lowest redis-py allowed states only for one of
    the two clients (their commands are the same)."""
    return client


async def _blpop(client: _Client, key: str, seconds: float) -> Any:
    """``BLPOP`` of one list, waiting up to ``seconds`` (fractions allowed)."""
    return await _loose(client).blpop([key], timeout=seconds)


_GROUP = "workers"
_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
    # Redis Cluster's, while a master fails over (they never come from a single Redis)
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.SlotNotCoveredError,
    redis_errors.AskError,
)
_EVENT_KINDS: dict[bytes, EventType] = {b"taskQueued": "taskQueued", b"taskProgress": "taskProgress"}
_record_decoder = msgspec.json.Decoder(TaskRecord)
_record_encoder = msgspec.json.Encoder()
_tick_decoder = msgspec.json.Decoder(tuple[int, float, str])
_loose_tick_decoder = msgspec.json.Decoder(list[Any])
_unreadable_ticks = LogOnce(window=300.0)


def tick_text(record: TaskRecord) -> bytes:
    """What a report that changes only the task's progress and message stores (the hash's
    ``tick`` field, in place of the whole record in ``data``; see the script's ``commit``):
    ``[revision, progress, message]``, a JSON array."""
    return _record_encoder.encode((record.revision, record.progress, record.message))


def stored_record(data: bytes, tick: bytes | None) -> TaskRecord:
    """A task's record from its hash's ``data`` and ``tick``: the tick's progress and message
    laid over the record when the tick is newer. (Every write of the whole record has a newer
    revision than the ticks before it, which then no longer apply; a version that knows no
    ticks writes them never and reads them not: it sees the progress of the last whole write.)"""
    record = _record_decoder.decode(data)
    if tick is not None:
        read = _read_tick(tick, record.id)
        if read is not None and read[0] > record.revision:
            return msgspec.structs.replace(record, revision=read[0], progress=read[1], message=read[2])
    return record


def _read_tick(tick: bytes, task_id: str) -> tuple[int, float, str] | None:
    """A tick's revision, progress and message. A tick this version cannot read (a later
    version's longer one: its first three items still are these; or damage) is left out, so
    the task reads as its last whole record and is never lost to it: logged once."""
    try:
        return _tick_decoder.decode(tick)
    except msgspec.DecodeError:  # (ValidationError included)
        pass
    try:
        items = _loose_tick_decoder.decode(tick)
    except msgspec.DecodeError:
        items = []
    if len(items) >= 3 and type(items[0]) is int and type(items[1]) in (int, float) and type(items[2]) is str:
        return items[0], float(items[1]), items[2]
    if _unreadable_ticks.first("tick"):
        logger.warning("task %s: its stored progress (tick) is unreadable; its last whole record is read", task_id)
    return None


def event_text(kind: EventType, task_id: str, revision: int, view_json: bytes) -> bytes:
    """An event as the script keeps and publishes it after its seq (see the script's `emit`):
    ``revision:kind:length of the task id:task id`` and the view; built here, where it costs a
    formatting, rather than in Redis's Lua, which hashes every string it makes."""
    task = task_id.encode()
    return b"%d:%s:%d:%s%s" % (revision, kind.encode(), len(task), task, view_json)


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Turn a Redis connection failure into ``BackendUnavailable``."""
    try:
        yield
    except Exception as exc:
        outage = _outage(exc, what)
        if outage is None:
            raise
        raise outage from exc


def _outage(exc: Exception, what: str) -> BackendUnavailable | None:
    """The ``BackendUnavailable`` that a Redis connection failure ``exc`` means, or None for
    any other error (for a hot path, where ``_unavailable``'s context manager costs too much)."""
    if isinstance(exc, _REDIS_ERRORS):
        return BackendUnavailable(f"Redis did not answer ({what}): {exc}")
    if isinstance(exc, redis_errors.RedisClusterException) and "cannot be connected" in str(exc):
        # (any other: a mistake, keys of two slots in one call, not an outage)
        return BackendUnavailable(f"Redis Cluster did not answer ({what}): {exc}")
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redacted(url: str) -> str:
    """``url`` without its password (its hosts as written: one, or a cluster's list)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = user + parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Keys:
    """Every key and channel name of one shard, under one prefix.

    Without a shard (a single Redis, one shard), names are ``prefix:...``. A shard's names
    carry its hash tag, ``{prefix:N}:...``: Redis Cluster puts every key and shard channel of
    one shard in one slot, so each script call touches one slot and stays atomic.
    """

    def __init__(self, prefix: str, shard: int | None = None) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigurationError("the key prefix must be a non-empty string without spaces")
        if shard is not None and ("{" in prefix or "}" in prefix):
            raise ConfigurationError("a sharded backend's key prefix must not contain '{' or '}' (its hash tags)")
        self.prefix = prefix
        base = self.base = prefix if shard is None else f"{{{prefix}:{shard}}}"
        self.stream = f"{base}:queue"
        self.counters = f"{base}:counters"
        self.cancel_channel = f"{base}:cancel"
        self.unfinished = f"{base}:unfinished"
        self.marker = f"{base}:marker"  # gone means Redis lost its data
        self.ring = f"{base}:ring"  # owners with waiting tasks, in turn order
        self.stamps = f"{base}:stamps"  # with several shards: when each owner in the ring went to its back
        self.running = f"{base}:running"  # leased tasks per owner
        self.wake = f"{base}:wake"  # a token per task that a waiting worker may take
        self.waiting_prefix = f"{base}:waiting:"
        self.delayed = f"{base}:delayed"  # tasks to run later, by when (ms since the epoch)
        self.dead = f"{base}:dead"  # failed tasks, by when they failed
        self.workers = f"{base}:workers"  # worker processes' consumers, by when last seen (ms)

    def waiting(self, owner: str) -> str:
        """The owner's tasks waiting for a worker, oldest first."""
        return f"{self.waiting_prefix}{owner}"

    def unique(self, owner: str) -> str:
        """The owner's unique keys, each to the id of its unfinished task."""
        return f"{self.base}:unique:{owner}"

    def task(self, task_id: str) -> str:
        return f"{self.base}:task:{task_id}"

    def owner(self, owner: str) -> str:
        return f"{self.base}:owner:{owner}"

    def seq(self, identity: str) -> str:
        return f"{self.base}:seq:{identity}"

    def history(self, identity: str) -> str:
        """The identity's last events, as published, in seq order: a list. (Earlier versions
        kept a stream under ``history:``, which this one leaves to expire.)"""
        return f"{self.base}:recent:{identity}"

    def channel(self, identity: str) -> str:
        return f"{self.base}:events:{identity}"


# --- pub/sub --------------------------------------------------------------------------
