"""Handing tasks to this process's workers: fairly between owners, or taken over."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from progressq._outage import backend_outage
from progressq.backends.postgres._common import Names, Pool, read, record_from, unavailable, writing
from progressq.backends.postgres._keeping import Held
from progressq.contracts import Lease, TaskRecord, utc_now
from progressq.errors import BackendUnavailable

if TYPE_CHECKING:
    from progressq.backends.postgres._registry import PostgresClientRegistry

logger = logging.getLogger("progressq.postgres")

_LEASED = """RETURNING record, attempt, revision, cancel_requested, deliveries"""
# A task whose worker stopped heartbeating: taken over (its running count stays its owner's).
_TAKEOVER = f"""UPDATE {{s}}.tasks SET attempt = attempt + 1, revision = revision + 1, deliveries = deliveries + 1,
        lease_until = statement_timestamp() + %(lease)s * interval '1 second'
    WHERE id = (SELECT id FROM {{s}}.tasks WHERE state = 'leased' AND lease_until < statement_timestamp()
        ORDER BY lease_until LIMIT 1 FOR UPDATE SKIP LOCKED)
    {_LEASED}"""
# The owner whose turn it is: the first in turn order with a task due and, under a cap,
# fewer running tasks than the cap. Its row stays locked until the lease commits, so that
# one owner's leases go one at a time (the cap holds) while other owners' go on beside.
_NEXT_OWNER = """SELECT o.owner FROM {s}.owners o
    WHERE EXISTS (SELECT 1 FROM {s}.tasks t
            WHERE t.owner = o.owner AND t.state = 'queued' AND t.run_at <= statement_timestamp())
        AND (%(cap)s = 0 OR (SELECT count(*) FROM {s}.tasks t WHERE t.owner = o.owner AND t.state = 'leased') < %(cap)s)
    ORDER BY o.turn LIMIT 1 FOR UPDATE OF o SKIP LOCKED"""
# Then, in a statement of its own (its snapshot is taken with the owner's row locked, so it
# counts every lease of that owner), the owner's first task due, if the owner is still below
# the cap; and the owner's next turn is after every other's.
_TAKE = f"""WITH taken AS (
        UPDATE {{s}}.tasks SET state = 'leased', attempt = attempt + 1, revision = revision + 1,
            deliveries = deliveries + 1, lease_until = statement_timestamp() + %(lease)s * interval '1 second'
        WHERE id = (SELECT id FROM {{s}}.tasks
            WHERE owner = %(owner)s AND state = 'queued' AND run_at <= statement_timestamp()
            ORDER BY position LIMIT 1 FOR UPDATE SKIP LOCKED)
        AND (%(cap)s = 0 OR (SELECT count(*) FROM {{s}}.tasks WHERE owner = %(owner)s AND state = 'leased') < %(cap)s)
        {_LEASED}
    ), turned AS (
        UPDATE {{s}}.owners SET turn = nextval('{{s}}.turns') WHERE owner = %(owner)s AND EXISTS (SELECT 1 FROM taken)
    )
    SELECT * FROM taken"""
_NEXT_DUE = """SELECT extract(epoch FROM min(run_at) - statement_timestamp()) FROM {s}.tasks
    WHERE state = 'queued' AND run_at > statement_timestamp()"""


class Leasing:
    """The part of :class:`PostgresTaskQueue` that hands out tasks. The queue sets these
    attributes up."""

    _pool: Pool
    _names: Names
    _registry: PostgresClientRegistry
    _lease_timeout: float
    _max_deliveries: int
    _running_per_owner: int | None
    _held: dict[str, Held]
    _wakeup: anyio.Event | None
    _next_takeover: float
    _taking: bool

    if TYPE_CHECKING:  # the queue's own, used here

        async def save_and_publish(
            self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
        ) -> bool: ...

        def _drop(self, lease: Lease) -> None: ...

        async def seen(self) -> None: ...

        async def release(self, lease: Lease, record: TaskRecord) -> bool: ...

    def _prepare_leasing(self) -> None:
        sql = self._names.sql
        self._takeover_sql = sql(_TAKEOVER)
        self._next_owner_sql = sql(_NEXT_OWNER)
        self._take_sql = sql(_TAKE)
        self._next_due_sql = sql(_NEXT_DUE)

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Hand an owner no more than ``limit`` running tasks at once, counted across every
        process on this schema (``None``: no limit). Tasks go round-robin across owners."""
        self._running_per_owner = limit
        if self._wakeup is not None:
            self._wakeup.set()

    async def lease(self) -> Lease:
        """Wait for the next task; rides out a database outage (logs, then retries)."""
        return (await self.lease_many(1))[0]

    async def lease_many(self, limit: int) -> list[Lease]:
        """Wait for the next tasks, at least one and at most ``limit`` (the caller's free
        slots), taken in turn in one transaction. Rides out a database outage."""
        limit = max(1, limit)
        if not self._taking:  # counted as a live worker from its first look for work on
            self._taking = True
            await self.seen()
        backoff = 0.1
        while True:
            wakeup = self._wakeup = anyio.Event()  # a wake-up from now on is not missed
            try:
                with writing("lease"):  # tasks taken are handed out, or back: never left leased to no one
                    leases, wait = await self._next(limit)
            except BackendUnavailable as exc:
                backend_outage.failed("taking tasks", exc)  # logged once per outage
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backend_outage.answered()
            backoff = 0.1
            if leases:
                try:
                    await anyio.lowlevel.checkpoint()
                except BaseException:  # the caller was cancelled meanwhile: the tasks wait again
                    with anyio.CancelScope(shield=True):
                        for lease in leases:
                            await self._hand_back(lease)
                    raise
                return leases
            if wait > 0:
                with anyio.move_on_after(wait):
                    await wakeup.wait()

    async def _hand_back(self, lease: Lease) -> None:
        try:
            await self.release(lease, lease.record)
        except BackendUnavailable as exc:
            logger.warning(
                "task %s: could not hand it back (it runs again once its lease expires): %s", lease.record.id, exc
            )

    async def _next(self, limit: int) -> tuple[list[Lease], float]:
        """Up to ``limit`` tasks, one taken over or taken in turn (none when there is none)
        and, without any, how long to wait at most before looking again."""
        now = anyio.current_time()
        takeover_every = min(1.0, self._lease_timeout / 2)
        rows: list[Any] = []
        if now >= self._next_takeover:
            row = await self._fetch(self._takeover_sql, {"lease": self._lease_timeout})
            if row is None:
                self._next_takeover = now + takeover_every
            else:
                rows.append(row)
        if len(rows) < limit:
            rows += await self._take_in_turn(limit - len(rows))
        if rows:
            return await self._leases(rows), 0.0  # none if all were given up on: look again at once
        row = await self._fetch(self._next_due_sql, {})
        due = float(row[0]) if row is not None and row[0] is not None else takeover_every
        return [], max(0.0, min(due, self._next_takeover - anyio.current_time(), takeover_every))

    async def _take_in_turn(self, limit: int) -> list[Any]:
        """Up to ``limit`` tasks taken round-robin across owners below the cap, in one
        transaction (the owners' rows it locked stay its own until it commits)."""
        cap = self._running_per_owner or 0
        taken: list[Any] = []
        with unavailable("lease"):
            async with self._pool.connection() as conn, conn.transaction():
                while len(taken) < limit:
                    row = await (await conn.execute(self._next_owner_sql, {"cap": cap})).fetchone()
                    if row is None:
                        break
                    args = {"lease": self._lease_timeout, "owner": row[0], "cap": cap}
                    task = await (await conn.execute(self._take_sql, args)).fetchone()
                    if task is None:
                        break
                    taken.append(task)
        return taken

    async def _leases(self, rows: list[Any]) -> list[Lease]:
        """The leases of the tasks taken, those given up on (dead letters) left out."""
        leases: list[Lease] = []
        try:
            for row in rows:
                lease = await self._leased(row)
                if lease is not None:
                    leases.append(lease)
        except BaseException:
            # Failed while handling them: the leases not handed out are not kept alive, so
            # that they expire and the tasks run again.
            for lease in leases:
                self._drop(lease)
            raise
        return leases

    async def _fetch(self, statement: str, args: dict[str, Any]) -> Any:
        return await read(self._pool, "lease", statement, args)

    async def _leased(self, row: Any) -> Lease | None:
        """The lease of a task taken (None when it was given up on instead)."""
        record = record_from(row)
        lease = Lease(record, str(record.attempt))
        self._held[record.id] = Held(record.attempt, record.status)
        deliveries = int(row[4])
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
        try:
            await self.save_and_publish(lease, record, record.view_json(), finish=True)
        except BackendUnavailable:
            self._drop(lease)
            raise
