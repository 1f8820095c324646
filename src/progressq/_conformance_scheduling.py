"""The conformance tests of scheduling, mixed into ``BackendConformance``.

A queue with its own ``FairDispatch`` (``limit_running_per_owner``) hands out waiting tasks
round-robin across their owners, under a cap of running tasks per owner. These tests hold it
to that, and to the cap across two instances when the backend shares its state; a queue with
the default is held to the default (no cap). Likewise for dead letters and periodic slots.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import anyio
import msgspec
import pytest

from progressq._conformance_support import uses_default
from progressq.contracts import Backend, FairDispatch, Lease, TaskQueue, TaskRecord
from progressq.errors import ConfigurationError

__all__ = ("SchedulingConformance", "check_fair_dispatch")

_WAIT = 10.0  # seconds to wait for a lease that is due (a hang guard)
_QUIET = 0.1  # seconds to wait for a lease that must not come: a wrong one comes at once
_BASE_TIME = datetime(2030, 1, 1, tzinfo=UTC)

Step = tuple[str, int]
"""One step of an interleaving: ``submit`` (for owner n), ``lease`` (one, if any is due),
``finish`` or ``release`` (the n-th running lease)."""


def _task(owner: str, n: int) -> TaskRecord:
    return TaskRecord(
        id=f"fair-{n}-{secrets.token_hex(4)}",
        kind="work",
        name=f"task {n}",
        owner=owner,
        created_at=_BASE_TIME + timedelta(seconds=n),
    )


async def _tick(ctx: Any) -> None:
    """A periodic task's handler (no worker runs it in these tests)."""


def _fair(queue: TaskQueue) -> FairDispatch:
    if uses_default(queue, "limit_running_per_owner"):
        pytest.skip("this queue uses the default dispatch (no cap, its own order), tested on its own")
    return queue


async def _lease(backend: Backend, within: float = _WAIT) -> Lease:
    with anyio.fail_after(within):
        return await backend.queue.lease()


async def _no_lease(backend: Backend, wait: float = _QUIET) -> Lease | None:
    with anyio.move_on_after(wait):
        return await backend.queue.lease()
    return None


async def _end(backend: Backend, lease: Lease) -> None:
    done = lease.record.evolve(status="completed", progress=100.0, finished_at=datetime.now(UTC))
    assert await backend.queue.save(lease, done)
    await backend.queue.finish(lease)


async def check_fair_dispatch(
    backend: Backend, steps: Sequence[Step], cap: int, owners: int = 3, *, quiet: float = _QUIET
) -> None:
    """Play ``steps`` on an opened ``backend`` with a cap of ``cap`` running tasks per owner,
    checking after every lease that:

    - a lease is handed out exactly when some owner has a waiting task and is below the cap,
      and then to such an owner (the cap is never exceeded, and no slot idles);
    - while an owner is due (a waiting task, below the cap), no other owner takes two turns:
      nobody waits behind another's backlog.

    ``quiet``: seconds to wait for a lease that must not come (one comes at once if wrong).
    Owners are named afresh, and what is left is cancelled or finished at the end, so that a
    backend shared between calls starts each one empty.
    """
    _fair(backend.queue).limit_running_per_owner(cap)
    tag = secrets.token_hex(3)
    names = [f"owner-{tag}-{n}" for n in range(owners)]
    waiting: dict[str, list[TaskRecord]] = {name: [] for name in names}
    running: dict[str, list[Lease]] = {name: [] for name in names}
    turns_while_due: dict[str, Counter[str]] = {name: Counter() for name in names}
    submitted = 0
    try:
        for action, choice in steps:
            held = [lease for name in names for lease in running[name]]
            if action == "submit":
                submitted += 1
                record = _task(names[choice % owners], submitted)
                await backend.queue.enqueue(record)
                waiting[record.owner].append(record)
            elif action in ("finish", "release") and held:
                lease = held[choice % len(held)]
                running[lease.record.owner].remove(lease)
                if action == "finish":
                    await _end(backend, lease)
                else:
                    assert await backend.queue.release(lease, lease.record.evolve(status="queued"))
                    waiting[lease.record.owner].insert(0, lease.record)
            elif action == "lease":
                due = {name for name in names if waiting[name] and len(running[name]) < cap}
                for name in names:
                    if name not in due:
                        turns_while_due[name].clear()
                if not due:
                    stray = await _no_lease(backend, quiet)
                    assert stray is None, f"{stray.record.owner} got a task at its cap, or none was waiting"
                    continue
                lease = await _lease(backend)
                owner = lease.record.owner
                assert owner in due, f"{owner} got a task while at its cap of {cap}"
                assert lease.record.id in {r.id for r in waiting[owner]}
                waiting[owner] = [r for r in waiting[owner] if r.id != lease.record.id]
                running[owner].append(lease)
                turns_while_due[owner].clear()
                for other in due - {owner}:
                    turns_while_due[other][owner] += 1
                    assert turns_while_due[other][owner] <= 1, f"{other} waited while {owner} took two turns"
    finally:
        with anyio.CancelScope(shield=True):
            for name in names:
                for lease in running[name]:
                    await _end(backend, lease)
                for record in waiting[name]:
                    await backend.queue.request_cancel(record.id, name)


class SchedulingConformance:
    """Fair dispatch between owners (round-robin turns, a cap of running tasks each), tasks
    to run later, and the list of failed tasks."""

    shared_state: ClassVar[bool] = False

    @pytest.mark.anyio
    async def test_fair_dispatch_takes_owners_in_turn_under_the_cap(self, make_backend: Callable[..., Backend]) -> None:
        async with make_backend() as backend:
            _fair(backend.queue).limit_running_per_owner(2)
            hog = [_task("hog", n) for n in range(100)]  # one owner's backlog, queued first
            for record in hog:
                await backend.queue.enqueue(record)
            late = [_task("late", 100 + n) for n in range(2)]
            for record in late:
                await backend.queue.enqueue(record)
            first, second = await _lease(backend), await _lease(backend)
            # the newcomer's first task starts at once: the backlog does not hold it up
            assert [first.record.owner, second.record.owner] == ["hog", "late"]
            third = await _lease(backend)
            assert third.record.owner == "hog"
            # both owners at the cap of 2... until one of the hog's tasks ends
            fourth = await _lease(backend)
            assert fourth.record.owner == "late"
            assert await _no_lease(backend, 0.3) is None
            await _end(backend, first)
            fifth = await _lease(backend)
            assert fifth.record.id == hog[2].id  # the hog's own line stays in order
            for lease in (second, third, fourth, fifth):
                await _end(backend, lease)
            for record in hog[3:]:
                await backend.queue.request_cancel(record.id, "hog")

    @pytest.mark.anyio
    async def test_the_default_dispatch_ignores_the_cap(self, make_backend: Callable[..., Backend]) -> None:
        async with make_backend() as backend:
            if not uses_default(backend.queue, "limit_running_per_owner"):
                pytest.skip("this queue dispatches fairly (its own limit_running_per_owner)")
            backend.queue.limit_running_per_owner(1)
            records = [_task("busy", n) for n in range(3)]
            for record in records:
                await backend.queue.enqueue(record)
            leases = [await _lease(backend) for _ in records]  # no cap: all three run at once
            assert [lease.record.id for lease in leases] == [record.id for record in records]
            for lease in leases:
                await _end(backend, lease)

    @pytest.mark.anyio
    async def test_the_cap_holds_across_instances(self, make_backend: Callable[..., Backend]) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as one, make_backend() as two:
            for queue in (one.queue, two.queue):
                _fair(queue).limit_running_per_owner(1)
            records = [_task("solo", n) for n in range(3)]
            for record in records:
                await one.queue.enqueue(record)
            lease = await _lease(one)
            assert await _no_lease(two, 0.5) is None  # the owner's one running task is on `one`
            await _end(one, lease)
            taken = await _lease(two)
            assert taken.record.id == records[1].id
            await _end(two, taken)
            await one.queue.request_cancel(records[2].id, "solo")

    @pytest.mark.anyio
    async def test_a_task_handed_back_for_later_waits_until_then(self, make_backend: Callable[..., Backend]) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            later, cancelled = _task("retrier", 1), _task("retrier", 2)
            for record in (later, cancelled):
                await queue.enqueue(record)
            run_at = datetime.now(UTC) + timedelta(seconds=1.5)
            for _ in range(2):
                lease = await _lease(backend)
                retry = lease.record.evolve(status="queued", run_at=run_at, error="ValueError")
                assert await queue.release(lease, retry)
            stored = await queue.get(later.id)
            assert stored is not None
            assert (stored.status, stored.run_at) == ("queued", run_at)
            assert (await queue.statistics()).queued == 2  # waiting, holding no worker
            outcome = await queue.request_cancel(cancelled.id, "retrier")
            assert outcome is not None
            assert outcome.result == "cancelled"
            assert await _no_lease(backend, 0.5) is None  # not before its time
            again = await _lease(backend)
            assert datetime.now(UTC) >= run_at - timedelta(milliseconds=5)
            assert (again.record.id, again.record.attempt) == (later.id, 2)
            await _end(backend, again)
            assert await _no_lease(backend, 2.0) is None  # the cancelled one never comes back

    @pytest.mark.anyio
    async def test_a_scheduled_task_runs_at_its_time_and_may_be_cancelled_before(
        self, make_backend: Callable[..., Backend]
    ) -> None:
        async with make_backend() as backend:
            queue = backend.queue
            run_at = datetime.now(UTC) + timedelta(seconds=1.5)
            due, dropped = (
                msgspec.structs.replace(_task("planner", n), status="scheduled", run_at=run_at) for n in (1, 2)
            )
            for record in (due, dropped):
                await queue.enqueue(record)
            assert (await queue.statistics()).queued == 2
            outcome = await queue.request_cancel(dropped.id, "planner")
            assert outcome is not None
            assert (outcome.result, outcome.record.status) == ("cancelled", "cancelled")
            assert await _no_lease(backend, 0.5) is None  # not before its time
            lease = await _lease(backend)
            assert datetime.now(UTC) >= run_at - timedelta(milliseconds=5)
            assert (lease.record.id, lease.record.attempt) == (due.id, 1)
            await _end(backend, lease)
            assert await _no_lease(backend, 2.0) is None  # the cancelled one never runs

    @pytest.mark.anyio
    async def test_scheduled_tasks_are_promoted_once_across_instances(
        self, make_backend: Callable[..., Backend]
    ) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as one, make_backend() as two:
            run_at = datetime.now(UTC) + timedelta(seconds=1.0)
            records = [
                msgspec.structs.replace(_task(f"planner-{n % 3}", n), status="scheduled", run_at=run_at)
                for n in range(9)
            ]
            for record in records:
                await one.queue.enqueue(record)
            leased: list[str] = []

            # Each takes until every task is done, then the other's wait is cancelled: a take
            # cancelled while nothing is left loses nothing, where a take cut off by a short
            # timeout on a busy machine could lose a lease it had just been given.
            async def take(backend: Backend, scope: anyio.CancelScope) -> None:
                while True:
                    lease = await backend.queue.lease()
                    await _end(backend, lease)
                    leased.append(lease.record.id)
                    if len(leased) >= len(records):
                        scope.cancel()

            with anyio.move_on_after(_WAIT * 3):  # a hang guard
                async with anyio.create_task_group() as group:
                    group.start_soon(take, one, group.cancel_scope)
                    group.start_soon(take, two, group.cancel_scope)
            assert await _no_lease(one) is None  # none comes twice
            assert await _no_lease(two) is None
            assert sorted(leased) == sorted(r.id for r in records), leased  # each once

    @pytest.mark.anyio
    async def test_failed_tasks_are_listed_as_dead_letters(self, make_backend: Callable[..., Backend]) -> None:
        async with make_backend() as backend:
            queue = dead = backend.queue
            if uses_default(queue, "dead_letters") or uses_default(queue, "forget_dead"):
                with pytest.raises(ConfigurationError):  # the default: no list, and it says so
                    await dead.dead_letters(10)
                with pytest.raises(ConfigurationError):
                    await dead.forget_dead("any")
                return
            failing, fine = _task("operator-view", 1), _task("operator-view", 2)
            for record in (failing, fine):
                await queue.enqueue(record)
            for _ in range(2):
                lease = await _lease(backend)
                if lease.record.id == failing.id:
                    failed = lease.record.evolve(status="failed", error="KeyError: 'x'", finished_at=datetime.now(UTC))
                    assert await queue.save(lease, failed)
                    await queue.finish(lease)
                else:
                    await _end(backend, lease)
            listed = await dead.dead_letters(10)
            assert [(r.id, r.status, r.error) for r in listed] == [(failing.id, "failed", "KeyError: 'x'")]
            assert await dead.forget_dead(failing.id)
            assert not await dead.forget_dead(failing.id)
            assert await dead.dead_letters(10) == []
            assert (await queue.get(failing.id)) is not None  # off the list, still readable

    @pytest.mark.anyio
    async def test_each_periodic_slot_fires_once_across_hubs(self, make_backend: Callable[..., Backend]) -> None:
        from progressq.hub import Hub  # the hub is the engine on top of the backend under test

        owner = f"clock-{secrets.token_hex(3)}"
        hubs = [
            Hub(make_backend(), secret="periodic-conformance-secret", concurrency=0)
            for _ in range(3 if self.shared_state else 1)
        ]
        for hub in hubs:
            hub.task("tick")(_tick)
            hub.every(0.5, "tick", owner=owner, schedule=f"tick-{owner}")
        async with contextlib.AsyncExitStack() as stack:
            for hub in hubs:
                await stack.enter_async_context(hub)
            await anyio.sleep(2.8)
            queue = hubs[0].queue
            fired = await queue.list_by_owner(owner)
            for record in fired:  # leave nothing queued behind
                await queue.request_cancel(record.id, owner)
        slots = sorted(math.floor(r.created_at.timestamp() / 0.5) for r in fired)
        assert len(slots) >= 3  # about 5 slots passed
        assert len(set(slots)) == len(slots), "a slot fired twice"

    def test_fair_dispatch_over_random_interleavings(
        self, make_backend: Callable[..., Backend], anyio_backend: str
    ) -> None:
        hypothesis: Any = pytest.importorskip("hypothesis")
        strategies: Any = pytest.importorskip("hypothesis.strategies")
        steps = strategies.lists(
            strategies.tuples(
                strategies.sampled_from(["submit", "submit", "lease", "lease", "finish", "release"]),
                strategies.integers(0, 7),
            ),
            max_size=30,
        )

        async def play(steps: list[Step], cap: int) -> None:
            async with make_backend() as backend:
                await check_fair_dispatch(backend, steps, cap)

        def check(steps: list[Step], cap: int) -> None:
            anyio.run(play, steps, cap, backend=anyio_backend)

        examples = hypothesis.settings(
            max_examples=12, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
        )
        examples(hypothesis.given(steps=steps, cap=strategies.integers(1, 3))(check))()
