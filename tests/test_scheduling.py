"""Scheduling in the worker pool and the memory queue: lease loss, fairness between owners."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progressq import AttemptOutcome, Hub, MemoryBackend, TaskContext, TaskHooks, TaskRecord
from progressq._conformance_scheduling import Step, check_fair_dispatch
from progressq.contracts import Lease
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
    save = queue.save

    async def fenced_after_start(lease: Lease, record: TaskRecord) -> bool:
        if record.kind == "long" and record.status == "running" and record.progress > 0:
            lost.set()  # as if another worker had taken the task over
            return False
        return await save(lease, record)

    queue.save = fenced_after_start  # type: ignore[method-assign]
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


@settings(max_examples=150, deadline=None)
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
        statuses = [(await hub.get(r.id, owner=OWNER)).status for r in backlog]
        assert statuses.count("running") == 2
        release.set()
