"""Scheduling in the worker pool and the memory queue: lease loss, fairness between owners."""

from __future__ import annotations

import anyio
import pytest

from progressq import AttemptOutcome, Hub, MemoryBackend, TaskContext, TaskHooks, TaskRecord
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
        sink = await attach(hub)
        doomed = await hub.submit("long", owner=OWNER)
        after = await hub.submit("quick", owner=OWNER)  # needs the only slot
        await wait_until(lambda: (doomed.id, "lost") in outcomes.ended, 30)
        await wait_until(lambda: sink.has_status(after.id, "completed"), 30)
        assert len(steps_after_loss) <= 1  # stopped at its next await, not at its end
