"""Writes made at the same moment commit together: one transaction, one commit (group commit).

PostgreSQL commits transactions that ``NOTIFY`` one at a time (a lock held from before the
commit's WAL flush until it ends), and every submit and every save with its event notifies:
one process's writes, each in a transaction of its own, were bounded by one WAL flush each.
Here the writes of one process that are made while earlier ones are on their way share a
transaction, so under load one flush and one notifying commit carry many of them, and the
notifications go out together at that commit (in the order they were made, per identity).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

from progressq.backends._group_commit import GroupCommit, settle
from progressq.backends.postgres._common import Connection, Pool

Write = Callable[[Connection], Awaitable[psycopg.AsyncCursor[Any]]]
"""Sends its statements inside an open transaction on ``conn`` (in pipeline mode: none of
them may wait for another's result) and returns the cursor of the one whose first row is
the write's outcome, read once every write of the batch is sent. Its caller acts on that
row only once the transaction has committed."""


class _Pending:
    __slots__ = ("capacity", "order", "write")

    def __init__(self, write: Write, order: tuple[str, str], capacity: bool) -> None:
        self.write = write
        self.order = order
        self.capacity = capacity


class WriteBatcher(GroupCommit[_Pending]):
    """Collects writes and commits them in batches (group commit, scheduled as
    ``progressq.backends._group_commit`` says: at a low rate every write goes alone).

    Locks are taken in one order by every batch, so that batches of different processes never
    wait on each other in a cycle: the capacity lock first (when any write of the batch needs
    it), then each write in the order of its ``order`` key, (owner, task id), since a write
    locks its owner's rows (owner, identity) and its task's row. The heartbeat locks the leases
    it extends in the same (owner, task id) order. Writes of one owner keep the order in which
    they were made (the sort is stable).

    A write that fails with an error of the database (not a lost connection) would undo the
    whole batch's transaction: the batch is then rolled back and each write runs again alone,
    so that the error reaches only the write it concerns. A lost connection, or a commit whose
    outcome is unknown, concerns every write of the batch, as it would have each alone.
    """

    def __init__(self, pool: Pool, capacity_lock: int | None, *, in_flight: int = 2, max_batch: int = 128) -> None:
        super().__init__(in_flight=in_flight, max_batch=max_batch)
        self.pool = pool
        self._capacity_lock = capacity_lock
        self.batches = 0  # committed, for tests and measurements
        self.writes = 0

    async def write(self, write: Write, *, owner: str, task_id: str, capacity: bool = False) -> Any:
        """Run ``write`` in a transaction, maybe with others made at the same moment; what it
        returned, once committed. ``capacity``: it counts against the queue's capacity (the
        capacity lock is taken before any of the batch's other locks)."""
        return await self.submit(_Pending(write, (owner, task_id), capacity))

    async def _run(self, batch: list[tuple[_Pending, asyncio.Future[Any]]]) -> None:
        batch.sort(key=lambda waiting: waiting[0].order)
        try:
            outcomes = await self._commit([pending for pending, _ in batch])
        except psycopg.Error as exc:
            if len(batch) == 1 or not _one_writes_fault(exc):
                _settle_all(batch, exc)
                return
            for pending, future in batch:  # each alone: the error reaches only its own write
                try:
                    settle(future, (await self._commit([pending]))[0], _cancelled)
                except BaseException as alone:
                    settle(future, alone, _cancelled)
                    if not isinstance(alone, Exception):
                        raise
            return
        except BaseException as exc:
            _settle_all(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            settle(future, outcome, _cancelled)

    async def _commit(self, batch: list[_Pending]) -> list[Any]:
        # In pipeline mode the batch (its begin and commit too) goes in one round trip.
        async with self.pool.connection() as conn, _pipeline(conn), conn.transaction():
            if self._capacity_lock is not None and any(pending.capacity for pending in batch):
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._capacity_lock,))
            cursors = [await pending.write(conn) for pending in batch]
            outcomes = [await cursor.fetchone() for cursor in cursors]
        self.batches += 1
        self.writes += len(batch)
        return outcomes


def _pipeline(conn: Connection) -> AbstractAsyncContextManager[Any]:
    return conn.pipeline() if _PIPELINES else contextlib.nullcontext()


_PIPELINES = psycopg.AsyncPipeline.is_supported()  # libpq 14 and later


def _one_writes_fault(exc: psycopg.Error) -> bool:
    """Whether ``exc`` may be one write's own (a constraint it broke, a deadlock it was
    picked for) rather than the connection's or the server's."""
    if isinstance(exc, psycopg.errors.TransactionRollback):  # a deadlock or serialization failure
        return True
    return not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _settle_all(batch: list[tuple[_Pending, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        settle(future, exc, _cancelled)


def _cancelled() -> Exception:
    return psycopg.OperationalError("the write was cancelled before PostgreSQL answered")
