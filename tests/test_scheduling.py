"""Scheduling in the worker pool and the memory queue: lease loss, fairness between owners."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progressq import AttemptOutcome, Hub, MemoryBackend, Retry, TaskContext, TaskHooks, TaskPolicy, TaskRecord
from progressq._conformance_scheduling import Step, check_fair_dispatch
from progressq._periodic import Cron
from progressq.backends.memory import MemoryTaskQueue
from progressq.contracts import Lease
from progressq.errors import ConfigurationError, TaskNotFound
from tests.integration.security_support import LONG
from tests.test_engine import OWNER, SECRET, attach, wait_until

pytestmark = pytest.mark.anyio


class Outcomes(TaskHooks):
    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []

    def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
        self.ended.append((record.id, outcome.status))


async def test_a_refused_write_stops_the_handler_and_frees_its_slot() -> None:
    outcomes = Outcomes()
    hub = Hub(MemoryBackend(), secret=SECRET, hooks=[outcomes], progress_interval=0.0, concurrency=1)
    steps_after_loss: list[int] = []
    lost = anyio.Event()

    @hub.task("long", timeout=120)
    async def long(ctx: TaskContext) -> None:
        for step in range(6000):  # a minute, unless stopped
            if lost.is_set():
                steps_after_loss.append(step)
            await ctx.report(step / 60, f"step {step}")
            await anyio.sleep(0.01)

    @hub.task("quick")
    async def quick(ctx: TaskContext) -> str:
        return "done"

    queue = hub.queue
    assert isinstance(queue, MemoryTaskQueue)
    save = queue.save_now  # every save of the memory queue goes through it (``save`` too)

    def fenced_after_start(lease: Lease, record: TaskRecord) -> bool:
        if record.kind == "long" and record.status == "running" and record.progress > 0:
            lost.set()  # as if another worker had taken the task over
            return False
        return save(lease, record)

    queue.save_now = fenced_after_start  # type: ignore[method-assign]
    async with hub:
        sink = await attach(hub, "owner-b")
        doomed = await hub.submit("long", owner=OWNER)
        after = await hub.submit("quick", owner="owner-b")  # needs the only slot
        await wait_until(lambda: (doomed.id, "lost") in outcomes.ended, 30)
        await wait_until(lambda: sink.has_status(after.id, "completed"), 30)
        assert len(steps_after_loss) <= 1  # stopped at its next await, not at its end


# --- fair dispatch between owners, on the memory queue -------------------------------------

_steps = st.lists(
    st.tuples(st.sampled_from(["submit", "submit", "lease", "lease", "finish", "release"]), st.integers(0, 7)),
    max_size=40,
)


@settings(max_examples=1500 if LONG else 150, deadline=None)
@given(steps=_steps, cap=st.integers(1, 3), owners=st.integers(2, 4))
def test_no_owner_waits_behind_another_and_none_exceeds_the_cap(steps: list[Step], cap: int, owners: int) -> None:
    async def play() -> None:
        async with MemoryBackend() as backend:
            await check_fair_dispatch(backend, steps, cap, owners, quiet=0.001)

    anyio.run(play)


async def test_one_owner_backlog_does_not_delay_another_owner_on_the_hub() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, concurrency=4, max_active_per_owner=None)
    release = anyio.Event()

    @hub.task("long", timeout=60)
    async def long(ctx: TaskContext) -> None:
        await release.wait()

    @hub.task("short")
    async def short(ctx: TaskContext) -> str:
        return "done"

    async with hub:
        assert hub.running_per_owner == 2  # half the slots by default
        sink = await attach(hub, "newcomer")
        backlog = [await hub.submit("long", owner=OWNER) for _ in range(100)]
        quick = await hub.submit("short", owner="newcomer")
        # two slots are the backlog's at most: the newcomer's task runs at once
        await wait_until(lambda: sink.has_status(quick.id, "completed"), 30)

        async def running() -> int:
            return [(await hub.get(r.id, owner=OWNER)).status for r in backlog].count("running")

        assert await running() <= 2  # never more than the owner's cap
        with anyio.fail_after(60):  # and its second slot fills (a busy machine may take a while)
            while await running() < 2:
                await anyio.sleep(0.01)
        assert await running() == 2
        release.set()


# --- retries --------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_with_jitter_below_it() -> None:
    policy = TaskPolicy(retry_backoff=1.0, retry_backoff_max=5.0, retry_jitter=False)
    assert [policy.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = TaskPolicy(retry_backoff=2.0, retry_backoff_max=100.0)
    samples = [jittered.backoff(3) for _ in range(200)]
    assert all(4.0 <= s <= 8.0 for s in samples)
    assert len(set(samples)) > 1
    assert policy.retries(ValueError())
    assert policy.retries(Retry())
    narrow = TaskPolicy(retry_on=(ConnectionError,))
    assert narrow.retries(ConnectionResetError())
    assert narrow.retries(Retry(after=1))
    assert not narrow.retries(ValueError())


async def test_a_retry_waits_queued_with_its_time_and_holds_no_slot() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, concurrency=1, progress_interval=0.0)
    tried: list[int] = []

    @hub.task("flaky", max_attempts=3)
    async def flaky(ctx: TaskContext) -> int:
        tried.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry(after=1.0, reason="the service is busy")
        return ctx.attempt

    @hub.task("quick")
    async def quick(ctx: TaskContext) -> str:
        return "done"

    async with hub:
        sink = await attach(hub)
        task = await hub.submit("flaky", owner=OWNER)
        await wait_until(lambda: sink.has_status(task.id, "running"))
        await wait_until(lambda: len(sink.views(task.id)) >= 3 and sink.views(task.id)[-1].status == "queued")
        waiting = sink.views(task.id)[-1]
        assert (waiting.attempt, waiting.error) == (1, "Retry: the service is busy")
        assert isinstance(waiting.run_at, datetime)
        assert waiting.run_at > waiting.created_at
        # the only slot is free meanwhile: another task runs at once
        other = await hub.submit("quick", owner=OWNER)
        await wait_until(lambda: sink.has_status(other.id, "completed"))
        assert not sink.has_status(task.id, "completed")
        await wait_until(lambda: sink.has_status(task.id, "completed"), 30)
        final = sink.last(task.id)
        assert final is not None
        assert final.attempt == 2
        assert final.run_at is msgspec.UNSET
        assert tried == [1, 2]
        assert datetime.now(UTC) >= waiting.run_at


async def test_retry_on_decides_which_errors_are_tried_again() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, progress_interval=0.0)
    attempts: dict[str, list[int]] = {"transient": [], "bug": []}

    @hub.task("call", max_attempts=3, retry_on=ConnectionError, retry_backoff=0.01, retry_jitter=False)
    async def call(ctx: TaskContext) -> None:
        which = str(ctx.payload["which"])
        attempts[which].append(ctx.attempt)
        if which == "transient":
            raise ConnectionResetError("peer reset")
        raise KeyError("bug")

    async with hub:
        sink = await attach(hub)
        transient = await hub.submit("call", owner=OWNER, payload={"which": "transient"})
        bug = await hub.submit("call", owner=OWNER, payload={"which": "bug"})
        await wait_until(lambda: sink.has_status(transient.id, "failed") and sink.has_status(bug.id, "failed"), 30)
    assert attempts == {"transient": [1, 2, 3], "bug": [1]}


# --- delayed tasks --------------------------------------------------------------------------


async def test_a_delayed_task_is_scheduled_with_its_time_then_runs() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, progress_interval=0.0)
    started: list[datetime] = []

    @hub.task("later")
    async def later(ctx: TaskContext) -> None:
        started.append(datetime.now(UTC))

    async with hub:
        sink = await attach(hub)
        delayed = await hub.submit("later", owner=OWNER, delay=1.0)
        at = datetime.now(UTC) + timedelta(seconds=1.0)
        timed = await hub.submit("later", owner=OWNER, at=at)
        dropped = await hub.submit("later", owner=OWNER, delay=1.0)
        first = sink.views(delayed.id)[0]
        assert first.status == "scheduled"
        assert isinstance(first.run_at, datetime)
        assert first.run_at > first.created_at
        assert (await hub.get(timed.id, owner=OWNER)).run_at == at
        cancelled = await hub.cancel(dropped.id, owner=OWNER)
        assert cancelled.status == "cancelled"
        await wait_until(
            lambda: sink.has_status(delayed.id, "completed") and sink.has_status(timed.id, "completed"), 30
        )
        assert min(started) >= first.run_at
        assert len(started) == 2  # the cancelled one never ran
        assert not sink.has_status(dropped.id, "running")


async def test_delay_and_at_are_checked() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET)

    @hub.task("later")
    async def later(ctx: TaskContext) -> None: ...

    async with hub:
        with pytest.raises(ValueError, match="not both"):
            await hub.submit("later", owner=OWNER, delay=1, at=datetime.now(UTC))
        with pytest.raises(ValueError, match="timezone-aware"):
            await hub.submit("later", owner=OWNER, at=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match=">= 0"):
            await hub.submit("later", owner=OWNER, delay=-1)


def test_the_how_to_page_runs_as_written() -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "how-to" / "scheduling.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    namespace: dict[str, Any] = {"__name__": "scheduling_how_to"}
    exec(compile("\n".join(blocks), str(page), "exec"), namespace)
    hub = namespace["hub"]
    assert (hub.running_per_owner, hub.max_active_per_owner) == (2, 100)
    policy = hub.task_kinds["fetch"].policy
    assert (policy.max_attempts, policy.retry_backoff, policy.retry_backoff_max) == (5, 2.0, 60.0)
    assert not policy.retries(ValueError())
    assert policy.retries(TimeoutError())


def _how_to_page() -> dict[str, Any]:
    """The scheduling how-to's ``python`` blocks, run as one module: its namespace."""
    page = Path(__file__).resolve().parents[1] / "docs" / "how-to" / "scheduling.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    namespace: dict[str, Any] = {"__name__": "scheduling_how_to"}
    exec(compile("\n".join(blocks), str(page), "exec"), namespace)
    return namespace


async def test_the_how_to_page_s_unique_submit_answers_with_one_task() -> None:
    namespace = _how_to_page()
    hub = namespace["hub"] = Hub(MemoryBackend(), secret=SECRET, concurrency=0)  # the page's, in memory

    @hub.task("fetch")
    async def fetch(ctx: TaskContext) -> None: ...

    async with hub:
        clicks = [await namespace["refresh"](OWNER, "https://example.com") for _ in range(5)]
        assert len(set(clicks)) == 1
        assert [r.id for r in await hub.list(owner=OWNER)] == clicks[:1]


# --- unique tasks ---------------------------------------------------------------------------


async def test_a_unique_key_is_checked_before_the_owner_s_limit_and_freed_by_the_end() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, concurrency=1, max_active_per_owner=1, progress_interval=0.0)
    release = anyio.Event()

    @hub.task("sync")
    async def sync(ctx: TaskContext) -> str:
        await release.wait()
        return "synced"

    async with hub:
        sink = await attach(hub)
        first = await hub.submit("sync", owner=OWNER, key="inbox")
        await wait_until(lambda: sink.has_status(first.id, "running"))
        again = await hub.submit("sync", owner=OWNER, key="inbox", name="another name")
        assert (again.id, again.status, again.name) == (first.id, "running", "sync")  # the task as it is
        queued = sum(1 for event in sink.events if event.kind == "taskQueued")
        assert queued == 1  # nothing new was announced
        release.set()
        await wait_until(lambda: sink.has_status(first.id, "completed"))
        fresh = await hub.submit("sync", owner=OWNER, key="inbox")
        assert fresh.id != first.id
        for bad in ("", "k" * 201):
            with pytest.raises(ValueError, match="key"):
                await hub.submit("sync", owner=OWNER, key=bad)


async def _nothing(ctx: TaskContext) -> None: ...


# --- dead letters ---------------------------------------------------------------------------


async def test_a_failed_task_can_be_listed_replayed_and_purged() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, progress_interval=0.0)
    broken = True

    @hub.task("fragile")
    async def fragile(ctx: TaskContext) -> str:
        if broken:
            raise RuntimeError("the disk is full")
        return "fixed"

    async with hub:
        sink = await attach(hub)
        # One after the other: two tasks runnable at once may fail in either order (trio
        # shuffles the tasks it runs in one batch), and the dead letters are newest first.
        first = await hub.submit("fragile", owner=OWNER, params={"n": 1})
        await wait_until(lambda: sink.has_status(first.id, "failed"))
        second = await hub.submit("fragile", owner=OWNER, params={"n": 2})
        await wait_until(lambda: sink.has_status(second.id, "failed"))
        dead = await hub.dead_letters()
        assert [r.id for r in dead] == [second.id, first.id]
        assert dead[0].error == "RuntimeError: the disk is full"
        broken = False  # the operator fixed the cause
        again = await hub.replay(first.id)
        assert (again.owner, again.kind, again.payload) == (OWNER, "fragile", {"n": 1})
        await wait_until(lambda: sink.has_status(again.id, "completed"))  # its owner sees it
        assert [r.id for r in await hub.dead_letters()] == [second.id]
        with pytest.raises(TaskNotFound):
            await hub.replay(again.id)  # not a failed task
        assert await hub.purge_dead() == 1
        assert await hub.dead_letters() == []


# --- periodic tasks -------------------------------------------------------------------------


def test_cron_expressions_find_their_next_minute() -> None:
    start = datetime(2030, 1, 1, 10, 7, 30, tzinfo=UTC)  # a Tuesday
    assert Cron("*/15 * * * *").next_after(start) == datetime(2030, 1, 1, 10, 15, tzinfo=UTC)
    assert Cron("0 9-17 * * 1-5").next_after(start) == datetime(2030, 1, 1, 11, 0, tzinfo=UTC)
    assert Cron("30 6 * * 0").next_after(start) == datetime(2030, 1, 6, 6, 30, tzinfo=UTC)  # Sunday
    assert Cron("0 0 29 2 *").next_after(start) == datetime(2032, 2, 29, tzinfo=UTC)  # a leap day
    either = Cron("0 12 1 * 5")  # the 1st or a Friday
    assert either.next_after(start) == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert either.next_after(datetime(2030, 1, 1, 13, tzinfo=UTC)) == datetime(2030, 1, 4, 12, 0, tzinfo=UTC)
    for bad in ("* * * *", "60 * * * *", "*/0 * * * *", "1-x * * * *", "0 0 31 2 *"):
        with pytest.raises(ConfigurationError):
            Cron(bad).next_after(start)


async def test_every_fires_on_its_slots_and_its_tasks_run() -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, progress_interval=0.0)
    ran: list[datetime] = []

    @hub.task("tick")
    async def tick(ctx: TaskContext) -> None:
        ran.append(datetime.now(UTC))

    hub.every(0.4, "tick", owner="clock", name="heartbeat")
    with pytest.raises(ConfigurationError):
        hub.every(1.0, "tick")  # the same schedule twice
    async with hub:
        with pytest.raises(ConfigurationError):
            hub.cron("* * * * *", "tick", schedule="late")  # only before opening
        await wait_until(lambda: len(ran) >= 3, 30)
        tasks = await hub.list(owner="clock")
    assert {t.name for t in tasks} == {"heartbeat"}
    slots = [math.floor(t.created_at.timestamp() / 0.4) for t in tasks]
    assert len(set(slots)) == len(slots)
