"""Shared pieces of the Redis backend: keys, scripts, errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import msgspec
from redis import exceptions as redis_errors

from progressq.contracts import (
    TaskRecord,
)
from progressq.errors import BackendUnavailable, ConfigurationError
from progressq.messages import EventType

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
        self.marker = f"{prefix}:marker"  # gone means Redis lost its data
        self.ring = f"{prefix}:ring"  # owners with waiting tasks, in turn order
        self.running = f"{prefix}:running"  # leased tasks per owner
        self.wake = f"{prefix}:wake"  # a token per task that a waiting worker may take
        self.waiting_prefix = f"{prefix}:waiting:"
        self.delayed = f"{prefix}:delayed"  # tasks to run later, by when (ms since the epoch)
        self.dead = f"{prefix}:dead"  # failed tasks, by when they failed
        self.workers = f"{prefix}:workers"  # worker processes' consumers, by when last seen (ms)

    def waiting(self, owner: str) -> str:
        """The owner's tasks waiting for a worker, oldest first."""
        return f"{self.waiting_prefix}{owner}"

    def unique(self, owner: str) -> str:
        """The owner's unique keys, each to the id of its unfinished task."""
        return f"{self.prefix}:unique:{owner}"

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
