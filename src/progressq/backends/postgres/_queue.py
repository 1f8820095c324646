"""The PostgreSQL task queue: tasks in a table, every write fenced by the task's attempt."""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import zlib
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import psycopg
from anyio.streams.memory import MemoryObjectSendStream

from progressq.backends.postgres._batch import WriteBatcher
from progressq.backends.postgres._common import (
    RECORD_COLUMNS,
    Connection,
    Names,
    Pool,
    encode_record,
    read,
    record_from,
    unavailable,
    writing,
)
from progressq.backends.postgres._keeping import Held, LeaseKeeping
from progressq.backends.postgres._leasing import Leasing
from progressq.backends.postgres._registry import NOTIFIED, NUMBERED, PostgresClientRegistry
from progressq.contracts import CancelOutcome, Lease, QueueDefaults, QueueStatistics, TaskRecord, utc_now
from progressq.errors import ConfigurationError, DuplicateTask, QueueFull

logger = logging.getLogger("progressq.postgres")

_LIVE = "(expires_at IS NULL OR expires_at > statement_timestamp())"  # not past its retention

_SAVE = """UPDATE {s}.tasks SET record = %(record)s, revision = %(revision)s, status = %(status)s,
        state = CASE WHEN %(terminal)s THEN 'done' ELSE state END,
        lease_until = CASE WHEN %(terminal)s THEN NULL ELSE lease_until END,
        expires_at = CASE WHEN %(terminal)s THEN statement_timestamp() + %(retention)s * interval '1 second' END,
        failed_at = CASE WHEN %(status)s = 'failed' THEN statement_timestamp() ELSE failed_at END
    WHERE id = %(id)s AND state = 'leased' AND attempt = %(attempt)s
    RETURNING cancel_requested"""
_SAVE_AND_PUBLISH = f"""WITH saved AS (
        {_SAVE.replace("revision = %(revision)s,", "revision = %(revision)s, published = %(revision)s,", 1)}
    ), go AS (SELECT 1 FROM saved), {NUMBERED}
    SELECT saved.cancel_requested, {NOTIFIED},
        CASE WHEN %(terminal)s AND EXISTS (SELECT 1 FROM {{s}}.tasks WHERE owner = %(owner)s AND state = 'queued')
            THEN pg_notify(%(wake)s, '') END
    FROM saved CROSS JOIN numbered"""
_WAKE_IF_WAITING = """SELECT pg_notify(%s, '') WHERE EXISTS
    (SELECT 1 FROM {s}.tasks WHERE owner = %s AND state = 'queued')"""
_RELEASE = """UPDATE {s}.tasks SET record = %(record)s, revision = %(revision)s, status = %(status)s,
        state = 'queued', position = -nextval('{s}.positions'), lease_until = NULL, deliveries = 0,
        run_at = coalesce(%(run_at)s::timestamptz, '-infinity'::timestamptz)
    WHERE id = %(id)s AND state = 'leased' AND attempt = %(attempt)s"""
# A new task, unless its owner has an unfinished task with its unique key, or is at its limit
# of unfinished tasks, or the queue is at its capacity (each counted in a snapshot taken with
# the owner's row, and the capacity's lock, held); announced to its owner when asked, and
# waiting workers woken; one statement.
_SUBMIT = f"""WITH holder AS (
        SELECT id FROM {{s}}.tasks
        WHERE %(key)s::text IS NOT NULL AND owner = %(owner)s AND key = %(key)s AND state <> 'done' LIMIT 1
    ), active AS (
        SELECT count(*) AS n FROM {{s}}.tasks
        WHERE %(max_unfinished)s::integer IS NOT NULL AND owner = %(owner)s AND state <> 'done'
    ), waiting AS (
        SELECT count(*) AS n FROM {{s}}.tasks WHERE %(capacity)s::integer IS NOT NULL AND state = 'queued'
    ), inserted AS (
        INSERT INTO {{s}}.tasks
            (id, owner, record, state, status, attempt, revision, published, created_at, position, run_at, key)
        SELECT %(id)s, %(owner)s, %(record)s, 'queued', %(status)s, %(attempt)s, %(revision)s,
            CASE WHEN %(announce)s THEN %(revision)s ELSE 0 END, %(created_at)s, nextval('{{s}}.positions'),
            coalesce(%(run_at)s::timestamptz, '-infinity'::timestamptz), %(key)s
        FROM active, waiting
        WHERE NOT EXISTS (SELECT 1 FROM holder)
            AND (%(max_unfinished)s::integer IS NULL OR active.n < %(max_unfinished)s::integer)
            AND (%(capacity)s::integer IS NULL OR waiting.n < %(capacity)s::integer)
        RETURNING 1
    ), go AS (SELECT 1 FROM inserted WHERE %(announce)s), {NUMBERED}
    SELECT (SELECT id FROM holder), (SELECT n FROM active), EXISTS (SELECT 1 FROM inserted),
        (SELECT {NOTIFIED} FROM numbered), CASE WHEN EXISTS (SELECT 1 FROM inserted) THEN pg_notify(%(wake)s, '') END"""
_OWNER = """INSERT INTO {s}.owners AS o (owner, turn) VALUES (%s, nextval('{s}.turns'))
    ON CONFLICT (owner) DO UPDATE SET turn = o.turn"""  # locks the owner's row: its submits one at a time
_KEYED = f"SELECT {RECORD_COLUMNS} FROM {{s}}.tasks WHERE owner = %s AND key = %s AND state <> 'done'"
_GET = f"SELECT {RECORD_COLUMNS} FROM {{s}}.tasks WHERE id = %s AND {_LIVE}"
_LIST = f"""SELECT {RECORD_COLUMNS} FROM {{s}}.tasks WHERE owner = %s AND {_LIVE}
    ORDER BY created_at DESC, id DESC LIMIT %s"""
_CANCEL_READ = f"SELECT {RECORD_COLUMNS}, state FROM {{s}}.tasks WHERE id = %s AND owner = %s AND {_LIVE} FOR UPDATE"
_CANCEL_FLAG = "UPDATE {s}.tasks SET cancel_requested = true WHERE id = %s"
_CANCEL_QUEUED = """UPDATE {s}.tasks SET record = %s, revision = %s, status = 'cancelled', state = 'done',
        cancel_requested = true, expires_at = statement_timestamp() + %s * interval '1 second'
    WHERE id = %s"""
_DEAD = f"""SELECT {RECORD_COLUMNS} FROM {{s}}.tasks WHERE failed_at IS NOT NULL AND {_LIVE}
    ORDER BY failed_at DESC LIMIT %s"""
_FORGET_DEAD = "UPDATE {s}.tasks SET failed_at = NULL WHERE id = %s AND failed_at IS NOT NULL"
_SLOT = """INSERT INTO {s}.slots AS slot (key, until) VALUES (%s, statement_timestamp() + %s * interval '1 second')
    ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE slot.until <= statement_timestamp()"""
_STATISTICS = f"""SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'leased'),
        count(*) FILTER (WHERE state = 'queued' AND run_at > statement_timestamp()),
        (SELECT count(*) FROM {{s}}.tasks WHERE failed_at IS NOT NULL AND {_LIVE}),
        (SELECT count(*) FROM {{s}}.workers
            WHERE seen_at > statement_timestamp() - 2 * %(lease)s * interval '1 second')
    FROM {{s}}.tasks WHERE state <> 'done'"""


class PostgresTaskQueue(Leasing, LeaseKeeping, QueueDefaults):
    """The task queue on PostgreSQL. Made by :class:`PostgresBackend`; see the package doc."""

    def __init__(
        self,
        pool: Pool,
        names: Names,
        registry: PostgresClientRegistry,
        *,
        capacity: int | None,
        retention: float,
        lease_timeout: float,
        max_deliveries: int,
    ) -> None:
        self._pool = pool
        self._names = names
        self._registry = registry
        self._capacity = capacity
        self._retention = retention
        self._lease_timeout = lease_timeout
        self._max_deliveries = max_deliveries
        self._running_per_owner: int | None = None
        self._held: dict[str, Held] = {}
        self._watchers: set[MemoryObjectSendStream[str]] = set()
        self._loss_watchers: set[MemoryObjectSendStream[tuple[str, int]]] = set()
        self._wakeup: anyio.Event | None = None  # made by ``lease``: a backend may be made outside any event loop
        self._next_takeover = -math.inf
        self._next_sweep = -math.inf
        self._taking = False  # this process's workers take tasks from this queue
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        sql = names.sql
        self._sql = {name: sql(text) for name, text in _STATEMENTS.items()}
        self._prepare_leasing()
        # submits and saves made at the same moment commit together
        self._batcher = WriteBatcher(pool, self._capacity_lock if capacity is not None else None)

    async def enqueue(self, record: TaskRecord) -> None:
        """Store and queue ``record``. Raises ``QueueFull`` at capacity, ``DuplicateTask``
        when its owner has an unfinished task with ``record.key``."""
        await self._submit(record, max_unfinished=None, announce=False)

    async def enqueue_and_announce(self, record: TaskRecord, *, max_unfinished: int | None) -> int | None:
        """Store, queue and announce ``record`` (``taskQueued``) in one transaction, unless
        its owner already has ``max_unfinished`` unfinished tasks: then nothing is queued and
        their count is returned. None: queued. No worker can publish the task's "running"
        before its owner was told it was queued: both wait for the commit.

        Raises:
            QueueFull: the queue is at capacity; nothing was queued.
            DuplicateTask: the owner has an unfinished task with ``record.key``; nothing was
                queued (the key is checked before the limit).
        """
        return await self._submit(record, max_unfinished=max_unfinished, announce=True)

    async def _submit(self, record: TaskRecord, *, max_unfinished: int | None, announce: bool) -> int | None:
        sql = self._sql
        args = {
            **_insert_args(record),
            **self._registry.event_args(record.owner, "taskQueued", record.id, record.revision, record.view_json()),
            "key": record.key,
            "max_unfinished": max_unfinished,
            "capacity": self._capacity,
            "announce": announce,
            "wake": self._names.wake,
        }

        async def submit(conn: Connection) -> Any:
            await conn.execute(sql["owner"], (record.owner,))  # the owner's submits: one at a time
            return await conn.execute(sql["submit"], args)

        try:
            with writing("enqueue"):
                # every submit counts under one lock when there is a capacity: it holds
                row = await self._batcher.write(
                    submit, owner=record.owner, task_id=record.id, capacity=self._capacity is not None
                )
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != "tasks_pkey":
                raise
            raise ConfigurationError(f"a task with id {record.id!r} already exists") from None
        assert row is not None  # the statement's final select has one row
        holder, active, inserted = row[0], int(row[1]), bool(row[2])
        if holder is not None:
            raise DuplicateTask(holder)  # checked before the limit, as on every backend
        if not inserted and max_unfinished is not None and active >= max_unfinished:
            return active
        if not inserted:
            raise QueueFull(retry_after=1.0)
        return None

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        return await self._store(lease, record, None)

    async def save_and_publish(
        self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> bool:
        """:meth:`save`, then publish ``record`` to its owner (``taskProgress``, its view
        ``view_json``) in the same transaction; ``finish`` is implied by a terminal record
        (saving it ends the lease). Nothing is published when fenced out (False)."""
        stored = await self._store(lease, record, view_json)
        if finish:
            self._drop(lease)
        return stored

    async def _store(self, lease: Lease, record: TaskRecord, view_json: bytes | None) -> bool:
        held = self._held.get(record.id)
        args = self._save_args(lease, record)
        sql, wake = self._sql, self._names.wake
        if view_json is not None:  # one statement: the save, its event, and a wake-up when it ends
            args.update(
                self._registry.event_args(record.owner, "taskProgress", record.id, record.revision, view_json),
                wake=wake,
                owner=record.owner,
            )

        async def store(conn: Connection) -> Any:
            if view_json is not None:
                return await conn.execute(sql["save_and_publish"], args)
            saved = await conn.execute(sql["save"], args)
            if record.finished:  # its owner may be below the cap again (a spare wake-up if fenced out)
                await conn.execute(sql["wake_if_waiting"], (wake, record.owner))
            return saved

        try:
            with writing("save"):
                row = await self._batcher.write(store, owner=record.owner, task_id=record.id)
            stored = row is not None
        except Exception:
            # A failed change of status means the engine gives up on this attempt: stop the
            # heartbeat so that the lease expires and another worker runs the task again.
            if held is not None and held.attempt == lease.record.attempt and held.status != record.status:
                del self._held[record.id]
            raise
        if not stored:
            self._drop(lease)
            return False
        if record.finished:
            self._drop(lease)
        elif held is not None and held.attempt == lease.record.attempt:
            held.status = record.status
            if row is not None and row[0] and record.status == "running":
                self._tell_cancel(record.id)  # asked before this attempt started: tell its worker again
        return True

    def _save_args(self, lease: Lease, record: TaskRecord) -> dict[str, Any]:
        return {
            "record": encode_record(record),
            "revision": record.revision,
            "status": record.status,
            "terminal": record.finished,
            "retention": self._retention,
            "id": record.id,
            "attempt": lease.record.attempt,
        }

    async def finish(self, lease: Lease) -> None:
        """Nothing left to do: saving the terminal record ended the lease."""
        self._drop(lease)

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        self._drop(lease)
        args = {**self._save_args(lease, record), "run_at": record.run_at}
        with writing("release"):
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(self._sql["release"], args)
                if cursor.rowcount != 1:
                    return False
                await conn.execute("SELECT pg_notify(%s, '')", (self._names.wake,))
        return True

    async def task_with_key(self, owner: str, key: str) -> TaskRecord | None:
        """The owner's unfinished task with the unique ``key``, or None."""
        row = await read(self._pool, "unique key", self._sql["keyed"], (owner, key))
        return None if row is None else record_from(row)

    async def get(self, task_id: str) -> TaskRecord | None:
        row = await read(self._pool, "get", self._sql["get"], (task_id,))
        return None if row is None else record_from(row)

    async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        count = 1000 if limit is None else min(limit, 1000)
        if count <= 0:
            return []
        rows = await read(self._pool, "list", self._sql["list"], (owner, count), every=True)
        return [record_from(row) for row in rows]

    async def request_cancel(self, task_id: str, owner: str) -> CancelOutcome | None:
        with writing("cancel"):
            async with self._pool.connection() as conn, conn.transaction():
                row = await (await conn.execute(self._sql["cancel_read"], (task_id, owner))).fetchone()
                if row is None:
                    return None
                record, state = record_from(row), row[4]
                if state == "done":
                    return CancelOutcome("finished", record)
                if state == "leased":
                    await conn.execute(self._sql["cancel_flag"], (task_id,))
                    await conn.execute("SELECT pg_notify(%s, %s)", (self._names.cancel, task_id))
                    return CancelOutcome("requested", msgspec.structs.replace(record, cancel_requested=True))
                cancelled = record.evolve(
                    status="cancelled", finished_at=utc_now(), message="cancelled", cancel_requested=True
                )
                await conn.execute(
                    self._sql["cancel_queued"],
                    (encode_record(cancelled), cancelled.revision, self._retention, task_id),
                )
        return CancelOutcome("cancelled", cancelled)

    async def claim_slot(self, key: str, ttl: float) -> bool:
        """True for the first claim of ``key`` within ``ttl`` seconds, in any process."""
        with unavailable("claim slot"):
            async with self._pool.connection() as conn:
                cursor = await conn.execute(self._sql["slot"], (key, ttl))
        return bool(cursor.rowcount == 1)

    async def dead_letters(self, limit: int) -> Sequence[TaskRecord]:
        """Up to ``limit`` failed tasks, the most recently failed first."""
        rows = await read(self._pool, "dead letters", self._sql["dead"], (max(0, limit),), every=True)
        return [record_from(row) for row in rows]

    async def forget_dead(self, task_id: str) -> bool:
        """Take a task off the failed list; False if it was not on it."""
        with unavailable("dead letters"):
            async with self._pool.connection() as conn:
                cursor = await conn.execute(self._sql["forget_dead"], (task_id,))
        return bool(cursor.rowcount == 1)

    async def statistics(self) -> QueueStatistics:
        """The counts of every process on this schema; ``workers``: the processes whose workers
        take tasks and were seen (every third of ``lease_timeout``) within two lease timeouts
        (by the database's clock): a worker gone longer than that has lost its leases anyway."""
        row = await read(self._pool, "statistics", self._sql["statistics"], {"lease": self._lease_timeout})
        queued, running, scheduled, dead, workers = (int(value) for value in row)
        return QueueStatistics(queued=queued, running=running, scheduled=scheduled, dead=dead, workers=workers)

    @property
    def _capacity_lock(self) -> int:
        """The advisory lock every submit takes when the queue has a capacity."""
        return zlib.crc32(f"progressq:{self._names.schema}:capacity".encode())


def _insert_args(record: TaskRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "owner": record.owner,
        "record": encode_record(record),
        "status": record.status,
        "attempt": record.attempt,
        "revision": record.revision,
        "created_at": record.created_at,
        "run_at": record.run_at,
    }


_STATEMENTS = {
    "save": _SAVE,
    "save_and_publish": _SAVE_AND_PUBLISH,
    "wake_if_waiting": _WAKE_IF_WAITING,
    "release": _RELEASE,
    "submit": _SUBMIT,
    "owner": _OWNER,
    "keyed": _KEYED,
    "get": _GET,
    "list": _LIST,
    "cancel_read": _CANCEL_READ,
    "cancel_flag": _CANCEL_FLAG,
    "cancel_queued": _CANCEL_QUEUED,
    "dead": _DEAD,
    "forget_dead": _FORGET_DEAD,
    "slot": _SLOT,
    "statistics": _STATISTICS,
}
