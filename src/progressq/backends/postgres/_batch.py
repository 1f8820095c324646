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

from progressq.backends.postgres._common import Connection, Pool

Write = Callable[[Connection], Awaitable[psycopg.AsyncCursor[Any]]]
"""Sends its statements inside an open transaction on ``conn`` (in pipeline mode: none of
them may wait for another's result) and returns the cursor of the one whose first row is
the write's outcome, read once every write of the batch is sent. Its caller acts on that
row only once the transaction has committed."""


class _Pending:
    __slots__ = ("capacity", "future", "order", "write")

    def __init__(self, write: Write, order: tuple[str, str], capacity: bool, future: asyncio.Future[Any]) -> None:
        self.write = write
        self.order = order
        self.capacity = capacity
        self.future = future


class WriteBatcher:
    """Collects writes and commits them in batches.

    At most ``in_flight`` batches are on their way at once; a write made while that many are
    out waits for one to return and then goes with every write made meanwhile. At a low rate
    every write goes alone on the next turn of the event loop.

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
        self.pool = pool
        self._capacity_lock = capacity_lock
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._scheduled: asyncio.Task[None] | None = None  # a flush that has not taken its batch yet
        self.batches = 0  # committed, for tests and measurements
        self.writes = 0

    async def write(self, write: Write, *, owner: str, task_id: str, capacity: bool = False) -> Any:
        """Run ``write`` in a transaction, maybe with others made at the same moment; what it
        returned, once committed. ``capacity``: it counts against the queue's capacity (the
        capacity lock is taken before any of the batch's other locks)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(write, (owner, task_id), capacity, future))
        self._schedule()
        return await future

    async def drain(self) -> None:
        """Wait for the batches on their way (before the pool closes)."""
        while self._flushes:
            await asyncio.wait(set(self._flushes))

    def _schedule(self) -> None:
        if self._scheduled is not None or not self._pending or len(self._flushes) >= self._in_flight:
            return  # one will take these writes: the scheduled flush, or the next when one returns
        flush = self._scheduled = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(flush)
        flush.add_done_callback(self._flushed)

    def _flushed(self, flush: asyncio.Task[None]) -> None:
        self._flushes.discard(flush)
        if self._scheduled is flush:  # cancelled before it took its batch: the writes still wait
            self._scheduled = None
        self._schedule()  # what arrived meanwhile leaves now, together

    async def _flush(self) -> None:
        self._scheduled = None
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._schedule()  # more than one batch waits: the next may go at once
        batch = [pending for pending in batch if not pending.future.done()]  # given up on: not run
        if not batch:
            return
        batch.sort(key=lambda pending: pending.order)
        try:
            outcomes = await self._commit(batch)
        except psycopg.Error as exc:
            if len(batch) == 1 or not _one_writes_fault(exc):
                _settle_all(batch, exc)
                return
            for pending in batch:  # each alone: the error reaches only its own write
                try:
                    _settle(pending.future, (await self._commit([pending]))[0])
                except BaseException as alone:
                    _settle(pending.future, alone)
                    if not isinstance(alone, Exception):
                        raise
            return
        except BaseException as exc:
            _settle_all(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            _settle(pending.future, outcome)

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


def _settle_all(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        _settle(pending.future, exc)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        if isinstance(outcome, asyncio.CancelledError):
            outcome = psycopg.OperationalError("the write was cancelled before PostgreSQL answered")
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
