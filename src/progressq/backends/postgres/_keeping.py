"""Keeping the leases this process holds (heartbeat, lost leases, cancellations) and the
tables to their bounds (retention, idle identities, old slots)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from progressq._outage import backend_outage
from progressq.backends.postgres._common import Names, Pool, unavailable
from progressq.contracts import Lease
from progressq.errors import BackendUnavailable

if TYPE_CHECKING:
    from progressq.backends.postgres._registry import PostgresClientRegistry

logger = logging.getLogger("progressq.postgres")

# The leases are locked in (owner, id) order, the order in which a batch of writes locks them
# (see ``_batch``): the heartbeat and a batch never wait on each other in a cycle.
_EXTEND = """WITH locked AS (
        SELECT t.id FROM {s}.tasks t, unnest(%s::text[], %s::integer[]) AS held(id, attempt)
        WHERE t.id = held.id AND t.attempt = held.attempt AND t.state = 'leased'
        ORDER BY t.owner, t.id FOR UPDATE OF t
    )
    UPDATE {s}.tasks t SET lease_until = statement_timestamp() + %s * interval '1 second'
    FROM locked WHERE t.id = locked.id
    RETURNING t.id, t.cancel_requested"""
_SWEEPS = (
    # finished tasks past their retention
    """DELETE FROM {s}.tasks WHERE id IN (SELECT id FROM {s}.tasks
        WHERE expires_at <= statement_timestamp() LIMIT 1000)""",
    # identities (their seq and history) idle past the history's time to live
    """DELETE FROM {s}.events e USING (SELECT identity FROM {s}.identities
        WHERE last_event_at < statement_timestamp() - %(history_ttl)s * interval '1 second' LIMIT 1000) idle
        WHERE e.identity = idle.identity""",
    """DELETE FROM {s}.identities WHERE identity IN (SELECT identity FROM {s}.identities
        WHERE last_event_at < statement_timestamp() - %(history_ttl)s * interval '1 second' LIMIT 1000)""",
    "DELETE FROM {s}.slots WHERE until < statement_timestamp() - interval '1 minute'",
    "DELETE FROM {s}.workers WHERE seen_at < statement_timestamp() - interval '1 hour'",
)
_SEEN = """INSERT INTO {s}.workers (id, seen_at) VALUES (%s, statement_timestamp())
    ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"""
_GONE = "DELETE FROM {s}.workers WHERE id = %s"
# Owners without unfinished tasks, locked first so that a submit under way (it locks its
# owner's row) is waited for and then seen.
_IDLE_OWNERS = """SELECT owner FROM {s}.owners o WHERE NOT EXISTS
    (SELECT 1 FROM {s}.tasks t WHERE t.owner = o.owner AND t.state <> 'done') LIMIT 1000 FOR UPDATE SKIP LOCKED"""
_FORGET_OWNERS = """DELETE FROM {s}.owners o WHERE owner = ANY(%s) AND NOT EXISTS
    (SELECT 1 FROM {s}.tasks t WHERE t.owner = o.owner AND t.state <> 'done')"""


class Held:
    """A lease this process holds, kept alive by the heartbeat."""

    __slots__ = ("attempt", "cancel_told", "status")

    def __init__(self, attempt: int, status: str) -> None:
        self.attempt = attempt
        self.status = status
        self.cancel_told = False


class LeaseKeeping:
    """The part of :class:`PostgresTaskQueue` that keeps its leases alive and tells its
    workers what became of them (taken over, cancel asked). The queue sets these up."""

    _pool: Pool
    _names: Names
    _registry: PostgresClientRegistry
    _lease_timeout: float
    _retention: float
    _held: dict[str, Held]
    _watchers: set[MemoryObjectSendStream[str]]
    _loss_watchers: set[MemoryObjectSendStream[tuple[str, int]]]
    _wakeup: anyio.Event | None
    _next_sweep: float
    _taking: bool
    worker_id: str

    async def extend(self, lease: Lease) -> bool:
        lost = await self._extend({lease.record.id: lease.record.attempt})
        return lease.record.id not in lost

    async def _extend(self, leases: dict[str, int]) -> set[str]:
        """Extend ``leases`` (task id: attempt) in one statement; the ids of those lost."""
        with unavailable("extend"):
            async with self._pool.connection() as conn:
                cursor = await conn.execute(
                    self._names.sql(_EXTEND), (list(leases), list(leases.values()), self._lease_timeout)
                )
                rows = await cursor.fetchall()
        for task_id, cancel_requested in rows:
            held = self._held.get(task_id)
            if cancel_requested and held is not None and not held.cancel_told:
                held.cancel_told = True
                self._tell_cancel(task_id)
        lost = set(leases) - {row[0] for row in rows}
        for task_id in lost:
            held = self._held.get(task_id)
            if held is not None and held.attempt == leases[task_id]:
                del self._held[task_id]
        return lost

    async def watch_cancellations(self) -> AsyncIterator[str]:
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._watchers.add(send)
        try:
            async with receive:
                async for task_id in receive:
                    yield task_id
        finally:
            self._watchers.discard(send)
            send.close()

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

    async def notified(self, channel: str, payload: str) -> None:
        """A notification on the queue's channels: work may wait, or a cancel was asked."""
        if channel == self._names.cancel:
            self._tell_cancel(payload)
        elif self._wakeup is not None:
            self._wakeup.set()

    async def reconnected(self) -> None:
        """Notifications may have been missed: waiting workers look again (cancellations
        come with the next heartbeat)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _tell_cancel(self, task_id: str) -> None:
        if task_id not in self._held:
            return  # not running in this process
        for watcher in tuple(self._watchers):
            watcher.send_nowait(task_id)

    def _drop(self, lease: Lease) -> None:
        held = self._held.get(lease.record.id)
        if held is not None and held.attempt == lease.record.attempt:
            del self._held[lease.record.id]

    async def heartbeat(self) -> None:
        """Extend every held lease every ``lease_timeout / 3`` seconds; keep the tables to
        their bounds now and then."""
        interval = self._lease_timeout / 3
        while True:
            await anyio.sleep(interval)
            if self._taking:  # this process's workers take tasks: it is seen alive
                await self.seen()
            if anyio.current_time() >= self._next_sweep:
                await self._sweep()
            leases = {task_id: held.attempt for task_id, held in self._held.items()}
            if not leases:
                continue
            try:
                lost = await self._extend(leases)
            except BackendUnavailable as exc:
                backend_outage.failed(f"a heartbeat of {len(leases)} tasks", exc)  # logged once per outage
                continue
            for task_id in lost:
                logger.warning("task %s: lease of attempt %d was taken over", task_id, leases[task_id])
                for watcher in tuple(self._loss_watchers):
                    watcher.send_nowait((task_id, leases[task_id]))

    async def seen(self) -> None:
        """Mark this process as a live worker (``statistics().workers`` counts those seen
        within two lease timeouts)."""
        try:
            with unavailable("worker presence"):
                async with self._pool.connection() as conn:
                    await conn.execute(self._names.sql(_SEEN), (self.worker_id,))
        except BackendUnavailable as exc:
            backend_outage.failed("marking this worker alive", exc)  # logged once per outage

    async def leave(self) -> None:
        """No longer counted as a live worker (a graceful exit)."""
        if not self._taking:
            return
        try:
            with unavailable("leave"):
                async with self._pool.connection() as conn:
                    await conn.execute(self._names.sql(_GONE), (self.worker_id,))
        except BackendUnavailable as exc:
            logger.warning("could not remove this worker from the live ones: %s", exc)

    async def _sweep(self) -> None:
        """Forget finished tasks past their retention, idle identities, old slots and owners."""
        self._next_sweep = anyio.current_time() + max(1.0, min(60.0, self._retention / 4))
        args = {"history_ttl": self._registry.history_ttl}
        try:
            with unavailable("sweep"):
                async with self._pool.connection() as conn:
                    for statement in _SWEEPS:
                        await conn.execute(self._names.sql(statement), args if "%(" in statement else None)
                    async with conn.transaction():
                        owners = [r[0] for r in await (await conn.execute(self._names.sql(_IDLE_OWNERS))).fetchall()]
                        if owners:
                            await conn.execute(self._names.sql(_FORGET_OWNERS), (owners,))
        except BackendUnavailable as exc:
            backend_outage.failed("forgetting expired tasks", exc)
