"""Shared pieces of the PostgreSQL backend: errors, records, URLs and channel names."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
import psycopg
import psycopg_pool

from progressq.contracts import TaskRecord
from progressq.errors import BackendUnavailable

logger = logging.getLogger("progressq.postgres")

Connection: TypeAlias = psycopg.AsyncConnection[Any]
Pool: TypeAlias = psycopg_pool.AsyncConnectionPool[Any]

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    # the server ended a session that stalled inside a transaction (see the pool's settings)
    psycopg.errors.IdleInTransactionSessionTimeout,
    psycopg_pool.PoolTimeout,
    psycopg_pool.TooManyRequests,
    ConnectionError,
    TimeoutError,
    OSError,
)
_record_decoder = msgspec.json.Decoder(TaskRecord)
_record_encoder = msgspec.json.Encoder()

NOTIFY_LIMIT = 7900
"""Bytes a notification's payload may have (PostgreSQL refuses 8000 or more); a larger
event is told by reference (identity and seq) and read from its table."""

WRITE_TIMEOUT = 30.0
"""Seconds a write may take (a connection waited for included) before it counts as failed."""

RECORD_COLUMNS = "record, attempt, revision, cancel_requested"
"""The columns :func:`record_from` reads, in its order."""


@contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn a lost or refused connection into ``BackendUnavailable``."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise BackendUnavailable(f"PostgreSQL did not answer ({what}): {exc}") from exc


@contextmanager
def writing(what: str) -> Iterator[None]:
    """A write that, once begun, is not interrupted by its caller's cancellation: its caller
    learns whether it committed (a cancelled commit would leave that unknown, and a record
    saved twice under one revision). Bounded by ``WRITE_TIMEOUT``; failures as ``unavailable``."""
    with unavailable(what), anyio.CancelScope(shield=True), anyio.fail_after(WRITE_TIMEOUT):
        yield


async def read(pool: Pool, what: str, statement: str, args: Any = None, *, every: bool = False) -> Any:
    """The first row (or, with ``every``, all rows) ``statement`` reads. Tried again when the
    connection fails: pooled connections that died while idle (the server restarted, a proxy
    cut them) are only found out when used; the pool's idle ones are then checked (the dead
    ones replaced), and a read can simply go again."""
    for attempt in (1, 2):
        try:
            with unavailable(what):
                async with pool.connection() as conn:
                    cursor = await conn.execute(statement, args)
                    return await (cursor.fetchall() if every else cursor.fetchone())
        except BackendUnavailable as exc:
            if attempt == 2 or not isinstance(exc.__cause__, psycopg.OperationalError):
                raise
            with unavailable(what):
                await pool.check()
    raise AssertionError("unreachable")  # pragma: no cover


def encode_record(record: TaskRecord) -> bytes:
    return _record_encoder.encode(record)


def record_from(row: Any) -> TaskRecord:
    """A record from a row starting with :data:`RECORD_COLUMNS`; the columns win."""
    return msgspec.structs.replace(
        _record_decoder.decode(row[0]), attempt=int(row[1]), revision=int(row[2]), cancel_requested=bool(row[3])
    )


def redacted(url: str) -> str:
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


class Names:
    """The quoted schema name for statements, and the notification channels."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.s = f'"{schema}"'  # as statements name it
        self.events = f"{schema}_events"  # every event of every identity (or a reference to it)
        self.wake = f"{schema}_wake"  # a task may be waiting: waiting workers look
        self.cancel = f"{schema}_cancel"  # a running task's owner asked to cancel (its id)

    def sql(self, statement: str) -> str:
        """``statement`` with ``{s}`` naming this schema."""
        return statement.replace("{s}", self.s)
