"""Taking tasks for this process's workers: fairly between owners, or taken over."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from redis import exceptions as redis_errors

from progressq._outage import backend_outage
from progressq.backends.redis._calls import _Calls
from progressq.backends.redis._common import _GROUP, _blpop, _Client, _Keys, _text, _unavailable, stored_record
from progressq.backends.redis._keeping import _Held, _within
from progressq.backends.redis._shards import _Shards
from progressq.backends.redis._turns import Due, plan_turns
from progressq.backends.redis._waking import _ShardWaking
from progressq.contracts import Lease, TaskRecord, utc_now
from progressq.errors import BackendUnavailable

logger = logging.getLogger("progressq.redis")

_SHARD_DEADLINE = 1.0  # one shard's step of taking: a hung master must not hold up the others
_SHARD_PAUSE = 5.0  # a shard that did not answer in time is passed over this long


class _ShardTaking:
    """What this process keeps about one shard while its workers take from it."""

    __slots__ = ("cursor", "group_ready", "index", "next_reclaim", "skip_until")

    def __init__(self, index: int) -> None:
        self.index = index
        self.group_ready = False  # the shard's stream and group exist (made by this process or another)
        self.cursor = "0-0"  # where the takeover scan of the shard's stream goes on
        self.next_reclaim = -math.inf
        self.skip_until = -math.inf  # it did not answer in time: passed over until then


class _Taking:
    """The part of :class:`RedisTaskQueue` that hands tasks to this process's workers: the
    waiting ones, round-robin across owners under their cap (``take``), and those whose
    worker stopped heartbeating (taken over). With several shards, each call starts with the
    next shard in turn and goes on to the others until it has ``limit`` tasks. The queue sets
    these attributes up."""

    _client: _Client
    _calls: Sequence[_Calls]
    _keys: Sequence[_Keys]
    _shards: _Shards
    _consumer: str
    _lease_timeout: float
    _held: dict[str, _Held]
    _taking: list[_ShardTaking]
    _taking_started: bool
    _turn: int
    _waking: _ShardWaking | None
    _max_deliveries: int
    _lease_ms: int
    _running_per_owner: int | None

    if TYPE_CHECKING:  # the queue's own, used here

        async def _commit(self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool) -> bool: ...

        def _drop(self, lease: Lease) -> None: ...

        def _calls_of(self, owner: str) -> _Calls: ...

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
        """Up to ``limit`` leases; none: waits for work first."""
        if len(self._taking) > 1:
            return await self._next_sharded(limit)
        leases, found = await self._next_of(self._taking[0], limit)
        if not leases and not found:
            with _unavailable("lease"):
                await self._wait_for_work()
        return leases

    async def _next_sharded(self, limit: int) -> list[Lease]:
        """Up to ``limit`` leases from several shards: first tasks taken over, one from each
        shard at once; then the waiting ones, as many from each shard as the next turns give it
        (``_turns``). Each shard's step has a deadline; a shard that does not answer in time
        (its master hangs or fails over) is passed over for a while, and the others go on;
        with no work from the others, its failure is raised."""
        leases: list[Lease] = []
        failures: list[BackendUnavailable] = []
        found = False
        try:
            count = len(self._taking)
            start, self._turn = self._turn, (self._turn + 1) % count
            now = anyio.current_time()
            in_turn = [self._taking[(start + step) % count] for step in range(count)]
            # one takeover from each shard due for one, at once, no more of them than the limit
            reclaiming = [shard for shard in in_turn if now >= max(shard.next_reclaim, shard.skip_until)][:limit]
            reclaimed: list[Any] = [False] * len(reclaiming)

            async def reclaim(n: int, shard: _ShardTaking) -> None:
                reclaimed[n] = await self._shard_step(failures, self._reclaim_into, shard, leases)

            async with anyio.create_task_group() as group:
                for n, shard in enumerate(reclaiming):
                    group.start_soon(reclaim, n, shard)
            found = any(reclaimed)
            if len(leases) < limit:
                planned = await self._plan(limit - len(leases), failures)
                async with anyio.create_task_group() as group:
                    for index, turns in planned.items():
                        group.start_soon(
                            self._shard_step, failures, self._take_into, self._taking[index], leases, turns
                        )
                found = found or bool(planned)
        except BaseException:
            # Cancelled midway: the leases not handed out are not kept alive, so that they
            # expire and their tasks run again.
            for lease in leases:
                self._drop(lease)
            raise
        if leases:
            return leases
        if failures:
            raise failures[0]
        if not found:
            with _unavailable("lease"):
                await self._wait_for_work()
        return leases

    async def _plan(self, limit: int, failures: list[BackendUnavailable]) -> dict[int, int]:
        """How many tasks to take from each shard: every shard's due owners, asked at once."""
        due: dict[int, list[Due]] = {}

        async def ask(shard: _ShardTaking) -> None:
            answer = await self._calls[shard.index].due(limit, self._running_per_owner).run()
            due[shard.index] = [(_text(owner), int(stamp), int(turns)) for owner, stamp, turns in answer]

        now = anyio.current_time()
        async with anyio.create_task_group() as group:
            for shard in self._taking:
                if now >= shard.skip_until:
                    group.start_soon(self._shard_step, failures, ask, shard)
        return plan_turns(due, limit)

    async def _shard_step(
        self, failures: list[BackendUnavailable], step: Callable[..., Awaitable[Any]], shard: _ShardTaking, *args: Any
    ) -> Any:
        """``step(shard, *args)``, with the shard's group made first and its failure noted
        (the other shards go on). A lost stream (Redis lost its data) is made again."""
        try:
            with _unavailable("lease"), _within(_SHARD_DEADLINE, f"taking from shard {shard.index}"):
                try:
                    if not shard.group_ready:
                        await self._ensure_group(shard)
                    return await step(shard, *args)
                except redis_errors.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise BackendUnavailable(f"Redis refused to hand out work: {exc}") from exc
                    shard.group_ready = False
                    shard.cursor = "0-0"
                    return True
        except BackendUnavailable as exc:
            # passed over for a while, so that the healthy shards' work is not held up by it
            shard.skip_until = anyio.current_time() + _SHARD_PAUSE
            failures.append(exc)
            return False

    async def _reclaim_into(self, shard: _ShardTaking, leases: list[Lease]) -> bool:
        """One task of the shard taken over (into ``leases``); whether one was found."""
        reclaimed = await self._reclaim_one(shard)
        if reclaimed is None:
            return False
        leases += await self._claim_all(shard, [reclaimed])
        return True

    async def _take_into(self, shard: _ShardTaking, leases: list[Lease], limit: int) -> None:
        leases += await self._take(shard, limit)

    async def _next_of(self, shard: _ShardTaking, limit: int) -> tuple[list[Lease], bool]:
        """Up to ``limit`` leases from one shard: one taken over, then what waits; and
        whether anything was found (a takeover that turned out to be nothing to run)."""
        try:
            with _unavailable("lease"):
                if not shard.group_ready:
                    await self._ensure_group(shard)
                leases: list[Lease] = []
                reclaimed = await self._reclaim_one(shard)
                if reclaimed is not None:
                    leases = await self._claim_all(shard, [reclaimed])
                    if limit - len(leases) < 1:
                        return leases, True
                # what is waiting, taken fairly and claimed in one round trip
                leases += await self._take(shard, limit - len(leases))
                return leases, reclaimed is not None
        except redis_errors.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream is gone (Redis lost its data): start again
                shard.group_ready = False
                shard.cursor = "0-0"
                return [], True
            raise BackendUnavailable(f"Redis refused to hand out work: {exc}") from exc

    async def _ensure_group(self, shard: _ShardTaking) -> None:
        try:
            await self._client.xgroup_create(self._keys[shard.index].stream, _GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        shard.group_ready = True
        if not self._taking_started:
            self._taking_started = True
            await self._seen()  # counted among the live workers at once, then by the heartbeat
            await self._prune_consumers()

    async def _reclaim_one(self, shard: _ShardTaking) -> tuple[str, str] | None:
        """Take over one entry whose worker stopped heartbeating, following the cursor."""
        now = anyio.current_time()
        if now < shard.next_reclaim:
            return None
        answer = await self._client.xautoclaim(
            self._keys[shard.index].stream, _GROUP, self._consumer, self._lease_ms, start_id=shard.cursor, count=1
        )
        cursor, entries = answer[0], answer[1]
        shard.cursor = _text(cursor)
        if shard.cursor == "0-0":
            shard.next_reclaim = now + min(1.0, self._lease_timeout / 2)
        for entry_id, fields in entries:
            if fields and b"t" in fields:
                return _text(entry_id), _text(fields[b"t"])
        return None

    async def _take(self, shard: _ShardTaking, limit: int) -> list[Lease]:
        """Up to ``limit`` waiting tasks of one shard, round-robin across owners below their
        cap of running tasks, taken and claimed in one script."""
        answers = await self._calls[shard.index].take(self._consumer, limit, self._running_per_owner).run()
        return await self._leases(shard, [(_text(entry), answer) for entry, answer in answers])

    async def _wait_for_work(self) -> None:
        """Wait until a task may be waiting (a token from its enqueue, or a capped owner's
        end), or the next takeover round is due."""
        next_reclaim = min(shard.next_reclaim for shard in self._taking)
        wait = max(0.05, min(1.0, self._lease_timeout / 2, next_reclaim - anyio.current_time()))
        if self._waking is None:  # one shard: one list to wait on
            await _blpop(self._client, self._keys[0].wake, wait)
        else:
            await self._waking.wait(wait)

    def limit_running_per_owner(self, limit: int | None) -> None:
        """Hand an owner no more than ``limit`` running tasks at once, counted across every
        process on this Redis (``None``: no limit). Tasks go round-robin across owners."""
        self._running_per_owner = limit

    async def _claim_all(self, shard: _ShardTaking, entries: list[tuple[str, str]]) -> list[Lease]:
        """Claim ``entries`` of one shard in one script call; the leases of those that are to run."""
        answers = await self._calls[shard.index].claim_many(self._consumer, entries).run()
        return await self._leases(shard, [(entry, answer) for (entry, _), answer in zip(entries, answers, strict=True)])

    async def _leases(self, shard: _ShardTaking, answers: list[tuple[str, Any]]) -> list[Lease]:
        """The leases of claim's answers (entry id, answer) of those that are to run."""
        leases: list[Lease] = []
        try:
            for entry, answer in answers:
                if int(answer[0]) == 1 and int(answer[5]) <= self._max_deliveries:
                    # a task to run, the common answer: without a coroutine of its own
                    leases.append(self._lease(shard, entry, answer))
                    continue
                lease = await self._claimed(shard, entry, answer)
                if lease is not None:
                    leases.append(lease)
        except BaseException:
            # Cancelled (or failed) while handling the answers: the leases not handed out are
            # not kept alive, so that they expire and the tasks run again.
            for lease in leases:
                self._drop(lease)
            raise
        return leases

    async def _claimed(self, shard: _ShardTaking, entry: str, answer: Any) -> Lease | None:
        """The lease of one claim answer, or None when there is nothing to run."""
        code = int(answer[0])
        if code == 0:
            return None
        if code == 1:
            lease = self._lease(shard, entry, answer)
            deliveries = int(answer[5])
            if deliveries > self._max_deliveries:
                await self._dead_letter(lease, deliveries - 1)
                return None
            return lease
        # 2: finished, but its worker died before acknowledging it: make sure its owner heard of
        # the end (the publish script drops it if it was published already)
        record = _claimed_record(answer, tick=False)  # ended: its whole record is stored
        if int(answer[5]) < record.revision:
            view = record.view_json()
            republish = self._calls[shard.index].publish(record.owner, "taskProgress", record.id, record.revision, view)
            try:
                with _unavailable("publish"):
                    await republish.run()
            except BackendUnavailable as exc:
                backend_outage.failed(f"publishing the final state of task {record.id}", exc)
        return None

    def _lease(self, shard: _ShardTaking, entry: str, answer: Any) -> Lease:
        """The lease of a claim answer of a task to run (code 1), held from now on."""
        record = _claimed_record(answer, tick=True)
        self._held[record.id] = _Held(entry, record.attempt, record.status, shard.index)
        return Lease(record, entry)

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
        await self._commit(lease, record, record.view_json(), finish=True)


def _claimed_record(answer: Any, *, tick: bool) -> TaskRecord:
    """The record of a claim answer (``{code, record, attempt, rev, cancel, deliveries, tick}``):
    Lua owns attempt, rev and cancel; a task to run (``tick``) carries its last report's
    progress and message when one was stored as a tick (``stored_record``)."""
    return msgspec.structs.replace(
        stored_record(answer[1], answer[6] if tick and len(answer) > 6 else None),
        attempt=int(answer[2]),
        revision=int(answer[3]),
        cancel_requested=bool(int(answer[4])),
    )
