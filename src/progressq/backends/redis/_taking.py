"""Taking tasks for this process's workers: fairly between owners, or taken over."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from progressq._outage import backend_outage
from progressq.backends.redis._calls import _Call, _Calls
from progressq.backends.redis._common import _GROUP, _Keys, _record_decoder, _text, _unavailable
from progressq.backends.redis._keeping import _Held
from progressq.contracts import Lease, TaskRecord, utc_now
from progressq.errors import BackendUnavailable

logger = logging.getLogger("progressq.redis")


class _Taking:
    """The part of :class:`RedisTaskQueue` that hands tasks to this process's workers: the
    waiting ones, round-robin across owners under their cap (take.lua), and those whose
    worker stopped heartbeating (taken over). The queue sets these attributes up."""

    _client: Redis
    _calls: _Calls
    _keys: _Keys
    _consumer: str
    _lease_timeout: float
    _held: dict[str, _Held]
    _group_ready: bool
    _max_deliveries: int
    _lease_ms: int
    _cursor: str
    _next_reclaim: float
    _running_per_owner: int | None

    if TYPE_CHECKING:  # the queue's own, used here

        async def _save_by(
            self, call: _Call, lease: Lease, record: TaskRecord, *, finish: bool, batched: bool
        ) -> bool: ...

        def _drop(self, lease: Lease) -> None: ...

        async def _prune_consumers(self, *, leaving: bool = False) -> None: ...

        async def _seen(self) -> None: ...

    async def lease(self) -> Lease:
        """Wait for the next task; rides out a Redis outage (logs, then retries)."""
        return (await self.lease_many(1))[0]

    async def lease_many(self, limit: int) -> list[Lease]:
        """Wait for the next tasks, at least one and at most ``limit`` (the caller's free
        slots): one read and one claim script for all of them. Rides out a Redis outage."""
        limit = max(1, limit)
        backoff = 0.1
        while True:
            try:
                leases = await self._next(limit)
            except BackendUnavailable as exc:
                backend_outage.failed("taking tasks", exc)  # logged once per outage
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backend_outage.answered()
            backoff = 0.1
            if leases:
                return leases

    async def _next(self, limit: int) -> list[Lease]:
        try:
            with _unavailable("lease"):
                if not self._group_ready:
                    await self._ensure_group()
                leases: list[Lease] = []
                reclaimed = await self._reclaim_one()
                if reclaimed is not None:
                    leases = await self._claim_all([reclaimed])
                    if limit - len(leases) < 1:
                        return leases
                # what is waiting, taken fairly and claimed in one round trip
                leases += await self._take(limit - len(leases))
                if not leases and reclaimed is None:
                    await self._wait_for_work()
                return leases
        except redis_errors.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream is gone (Redis lost its data): start again
                self._group_ready = False
                self._cursor = "0-0"
                return []
            raise BackendUnavailable(f"Redis refused to hand out work: {exc}") from exc

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self._keys.stream, _GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        await self._seen()  # counted among the live workers at once, then by the heartbeat
        await self._prune_consumers()

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

    async def _take(self, limit: int) -> list[Lease]:
        """Up to ``limit`` waiting tasks, round-robin across owners below their cap of
        running tasks, taken and claimed in one script."""
        answers = await self._calls.run(self._calls.take(self._consumer, limit, self._running_per_owner))
        return await self._leases([(_text(entry), answer) for entry, answer in answers])

    async def _wait_for_work(self) -> None:
        """Wait until a task may be waiting (a token from its enqueue, or a capped owner's
        end), or the next takeover round is due."""
        wait = max(0.05, min(1.0, self._lease_timeout / 2, self._next_reclaim - anyio.current_time()))
        await self._client.blpop([self._keys.wake], timeout=wait)

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Hand an owner no more than ``limit`` running tasks at once, counted across every
        process on this Redis (``None``: no limit). Tasks go round-robin across owners."""
        self._running_per_owner = limit

    async def _claim_all(self, entries: list[tuple[str, str]]) -> list[Lease]:
        """Claim ``entries`` in one script call; the leases of those that are to run."""
        answers = await self._calls.run(self._calls.claim_many(self._consumer, entries))
        return await self._leases([(entry, answer) for (entry, _), answer in zip(entries, answers, strict=True)])

    async def _leases(self, answers: list[tuple[str, Any]]) -> list[Lease]:
        """The leases of claim.lua's answers (entry id, answer) of those that are to run."""
        leases: list[Lease] = []
        try:
            for entry, answer in answers:
                lease = await self._claimed(entry, answer)
                if lease is not None:
                    leases.append(lease)
        except BaseException:
            # Cancelled (or failed) while handling the answers: the leases not handed out are
            # not kept alive, so that they expire and the tasks run again.
            for lease in leases:
                self._drop(lease)
            raise
        return leases

    async def _claimed(self, entry: str, answer: Any) -> Lease | None:
        """The lease of one claim.lua answer, or None when there is nothing to run."""
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
                view = record.view_json()
                republish = self._calls.publish(record.owner, "taskProgress", record.id, record.revision, view)
                try:
                    with _unavailable("publish"):
                        await self._calls.run(republish)
                except BackendUnavailable as exc:
                    backend_outage.failed(f"publishing the final state of task {record.id}", exc)
            return None
        deliveries = int(answer[5])
        self._held[record.id] = _Held(entry, record.attempt, record.status)
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
        # stored, told to its owner and acknowledged in one step
        commit = self._calls.commit(lease, record, record.view_json(), finish=True)
        await self._save_by(commit, lease, record, finish=True, batched=False)
