"""The engine on the memory backend, on asyncio and trio: what one owner's connections see."""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
import types
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import progressq._context
from progressq import Event, Hub, MemoryBackend, TaskContext, TaskRecord
from progressq.backends.memory import MemoryClientRegistry
from progressq.contracts import Lease, SinkDefaults, utc_now
from progressq.errors import (
    ConfigurationError,
    QueueFull,
    TaskAlreadyFinished,
    TaskNotFound,
    UnknownTaskKind,
    ValidationError,
)
from progressq.messages import TaskView
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

SECRET = "engine-test-secret-0123456789"
OWNER = "owner-a"
OTHER = "owner-b"


class RecordingSink(SinkDefaults):
    """A fake connection: records every event delivered to it, with the time it arrived."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.times: list[float] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        self.times.append(anyio.current_time())

    def views(self, task_id: str | None = None) -> list[TaskView]:
        views = [msgspec.json.decode(e.task_json, type=TaskView) for e in self.events]
        return [v for v in views if task_id is None or v.id == task_id]

    def statuses(self, task_id: str) -> list[str]:
        return [v.status for v in self.views(task_id)]

    def last(self, task_id: str) -> TaskView | None:
        views = self.views(task_id)
        return views[-1] if views else None

    def has_status(self, task_id: str, status: str) -> bool:
        return status in self.statuses(task_id)


def make_hub(*, backend: MemoryBackend | None = None, **options: Any) -> Hub:
    options.setdefault("progress_interval", 0.0)
    options.setdefault("shutdown_grace", 1.0)
    return Hub(backend or MemoryBackend(), secret=SECRET, **options)


async def wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.002)


async def attach(hub: Hub, owner: str = OWNER) -> RecordingSink:
    sink = RecordingSink()
    await hub.registry.attach(owner, sink)
    return sink


# --- life of a task -----------------------------------------------------------------------


async def test_events_go_queued_running_progress_completed_with_gapless_seq() -> None:
    hub = make_hub()

    @hub.task("resize")
    async def resize(ctx: TaskContext) -> dict[str, int]:
        assert ctx.payload == {"width": 640}
        assert (ctx.kind, ctx.name, ctx.owner, ctx.attempt) == ("resize", "holiday.jpg", OWNER, 1)
        await ctx.report(25, "quarter")
        await ctx.report(50, "half")
        return {"width": 640}

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("resize", owner=OWNER, name="  holiday.jpg ", payload={"width": 640})
        assert record.name == "holiday.jpg"
        await wait_until(lambda: sink.has_status(record.id, "completed"))

    assert [e.seq for e in sink.events] == list(range(1, len(sink.events) + 1))
    assert [e.kind for e in sink.events] == ["taskQueued"] + ["taskProgress"] * (len(sink.events) - 1)
    views = sink.views(record.id)
    assert [(v.status, v.progress, v.message) for v in views] == [
        ("queued", 0.0, ""),
        ("running", 0.0, "started"),
        ("running", 25.0, "quarter"),
        ("running", 50.0, "half"),
        ("completed", 100.0, "half"),  # the last reported message stays
    ]
    final = views[-1]
    assert final.result == {"width": 640}
    assert final.error is msgspec.UNSET
    assert final.attempt == 1
    assert final.started_at is not None
    assert final.finished_at is not None
    assert final.created_at <= final.started_at <= final.finished_at
    assert sink.events[-1].revision > sink.events[0].revision
    stored = await hub.get(record.id, owner=OWNER)
    assert stored.view() == final


async def test_seq_is_per_identity_and_shared_by_its_connections() -> None:
    hub = make_hub(concurrency=0)
    hub.task("noop")(_noop)
    async with hub:
        first, second, other = await attach(hub), await attach(hub), await attach(hub, OTHER)
        for _ in range(3):
            await hub.submit("noop", owner=OWNER)
        await hub.submit("noop", owner=OTHER)
    assert [e.seq for e in first.events] == [1, 2, 3]
    assert [e.frame for e in first.events] == [e.frame for e in second.events]
    assert first.events[0] is second.events[0]  # one event object, framed once, for every connection
    assert [e.seq for e in other.events] == [1]
    assert {v.id for v in other.views()}.isdisjoint({v.id for v in first.views()})


async def _noop(ctx: TaskContext) -> None:
    return None


async def test_submit_validates_its_input_and_stores_nothing_on_refusal() -> None:
    hub = make_hub(concurrency=0)
    hub.task("noop")(_noop)
    async with hub:
        sink = await attach(hub)
        with pytest.raises(UnknownTaskKind):
            await hub.submit("nope", owner=OWNER)
        for name in ("", "   ", "x" * 201):
            with pytest.raises(ValueError, match="name"):
                await hub.submit("noop", owner=OWNER, name=name)
        with pytest.raises(ValidationError, match="cannot be encoded"):
            await hub.submit("noop", owner=OWNER, payload={"when": object()})
        assert await hub.list(owner=OWNER) == []
        assert sink.events == []
        assert await hub.registry.current_seq(OWNER) == 0
        assert (await hub.queue.statistics()).queued == 0
        ok = await hub.submit("noop", owner=OWNER, name="x" * 200)
        assert ok.name == "x" * 200


# --- progress reporting ---------------------------------------------------------------------


async def test_tight_loop_is_rate_limited_and_keeps_the_last_value() -> None:
    interval = 0.05
    hub = make_hub(progress_interval=interval)
    steps = 3000
    span: dict[str, float] = {}

    @hub.task("busy")
    async def busy(ctx: TaskContext) -> None:
        span["start"] = anyio.current_time()
        for step in range(1, steps + 1):
            await ctx.report(step * 100 / steps * 0.99, f"step {step}")
            if step % 25 == 0:
                await anyio.sleep(0.001)
        span["end"] = anyio.current_time()
        await anyio.sleep(interval * 4)  # nothing more is reported; the pending value must still go out

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("busy", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))

    progress = [
        (time, view)
        for time, view in zip(sink.times, sink.views(), strict=True)
        if view.status == "running" and view.message.startswith("step")
    ]
    elapsed = span["end"] - span["start"]
    # At most one event per interval over the loop, plus the trailing flush.
    assert 1 <= len(progress) <= elapsed / interval + 2
    for (earlier, _), (later, _) in itertools.pairwise(progress):
        assert later - earlier >= interval * 0.5
    last = progress[-1][1]
    assert last.message == f"step {steps}"
    assert last.progress == pytest.approx(99.0)


@pytest.mark.parametrize("interval", [0.0, 0.05])
async def test_a_handler_looping_on_report_alone_lets_others_run_and_can_be_cancelled(interval: float) -> None:
    # ``report`` may finish without suspending; it must still yield now and then, or such a
    # handler would hold the event loop (and its own cancellation) forever.
    hub = make_hub(progress_interval=interval)
    started = anyio.Event()
    ticks = 0

    @hub.task("spin")
    async def spin(ctx: TaskContext) -> None:
        started.set()
        while True:
            await ctx.report(50, "spinning")

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.001)
            ticks += 1

    async with hub, anyio.create_task_group() as group:
        sink = await attach(hub)
        record = await hub.submit("spin", owner=OWNER)
        await started.wait()
        group.start_soon(tick)
        # The spinning handler does not starve the loop: the ticker goes round (a handler that
        # never yielded would hold this task too, and the test would time out).
        with anyio.fail_after(PATIENCE):
            while ticks < 10:
                await anyio.sleep(0.01)
        await hub.cancel(record.id, owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "cancelled"))
        group.cancel_scope.cancel()


async def test_a_handler_computing_between_reports_without_awaiting_still_lets_others_run() -> None:
    # Each report is 5 ms of blocking work after the last: report must yield often enough
    # that the loop is never held for much longer than that.
    # Counted in reports between two turns of another task, not in seconds: a busy machine
    # stretches the time, not the count.
    hub = make_hub(progress_interval=0.05)
    reports = 0
    seen: list[int] = []  # reports made, at each turn of the watcher
    stop = anyio.Event()

    @hub.task("grind")
    async def grind(ctx: TaskContext) -> None:
        nonlocal reports
        while not stop.is_set():
            time.sleep(0.005)  # noqa: ASYNC251 - CPU-bound work that never awaits, on purpose
            await ctx.report(50, "grinding")
            reports += 1

    async def watch() -> None:
        while not stop.is_set():
            await anyio.lowlevel.checkpoint()
            seen.append(reports)
            if reports >= 40:
                stop.set()

    async with hub, anyio.create_task_group() as group:
        await hub.submit("grind", owner=OWNER)
        group.start_soon(watch)
        with anyio.fail_after(PATIENCE):
            await stop.wait()
    runs = [later - earlier for earlier, later in itertools.pairwise(seen)]
    assert max(runs) <= 2  # every report or so yields, never ~32 of them in a row


async def test_the_pending_report_is_sent_without_another_report() -> None:
    hub = make_hub(progress_interval=0.1)
    release = anyio.Event()

    @hub.task("pause")
    async def pause(ctx: TaskContext) -> None:
        await ctx.report(10, "first")
        await ctx.report(20, "pending")  # within the interval: held, then flushed
        await release.wait()

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("pause", owner=OWNER)
        await wait_until(lambda: any(v.message == "pending" for v in sink.views(record.id)))
        release.set()
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    messages = [v.message for v in sink.views(record.id) if v.status == "running"]
    assert messages == ["started", "first", "pending"]
    assert [v.progress for v in sink.views(record.id) if v.message == "pending" and v.status == "running"] == [20.0]


async def test_the_last_report_survives_an_immediate_failure() -> None:
    hub = make_hub(progress_interval=60.0)

    @hub.task("crash")
    async def crash(ctx: TaskContext) -> None:
        await ctx.report(10, "first")
        await ctx.report(42.5, "almost")  # rate-limited, never flushed before the failure
        raise RuntimeError("boom")

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("crash", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "failed"))
    final = sink.last(record.id)
    assert final is not None
    assert final.progress == 42.5
    assert final.error == "RuntimeError: boom"


async def test_progress_never_decreases_within_an_attempt() -> None:
    hub = make_hub()
    seen: list[float] = []

    @hub.task("wobble")
    async def wobble(ctx: TaskContext) -> None:
        for percent in (10, 50, 30, 50, 49.9, 70, 0, 65):
            await ctx.report(percent, f"at {percent}")
            seen.append(ctx.progress)

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("wobble", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    assert seen == [10, 50, 50, 50, 50, 70, 70, 70]
    running = [v for v in sink.views(record.id) if v.status == "running"]
    assert [v.progress for v in running] == sorted(v.progress for v in running)
    # A lower report keeps the higher percent but does carry its message.
    assert (running[3].progress, running[3].message) == (50.0, "at 30")


async def test_memory_backend_reports_are_committed_by_its_plain_save_and_publish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A report on the memory backend calls its ``save_and_publish_now`` directly (no
    coroutine), and that commits, fenced and published, exactly as ``save_and_publish``."""
    plain = MemoryBackend.save_and_publish_now
    awaited = MemoryBackend.save_and_publish
    committed: list[float] = []
    awaited_for: list[float] = []

    def counting_plain(self: MemoryBackend, lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
        committed.append(record.progress)
        return plain(self, lease, record, view_json)

    async def counting_awaited(
        self: MemoryBackend, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> bool:
        awaited_for.append(record.progress)
        return await awaited(self, lease, record, view_json, finish=finish)

    monkeypatch.setattr(MemoryBackend, "save_and_publish_now", counting_plain)
    monkeypatch.setattr(MemoryBackend, "save_and_publish", counting_awaited)  # the class's own still
    hub = make_hub()

    @hub.task("steps")
    async def steps(ctx: TaskContext) -> None:
        for percent in (10, 20, 30):
            await ctx.report(percent, f"at {percent}")

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("steps", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    # The worker's own commits (started, completed) await ``save_and_publish``, which makes
    # the same plain call; the reports make it alone.
    assert awaited_for == [0.0, 100.0]
    assert committed == [0.0, 10, 20, 30, 100.0]
    running = [(v.progress, v.message) for v in sink.views(record.id) if v.status == "running"]
    assert running == [(0.0, "started"), (10.0, "at 10"), (20.0, "at 20"), (30.0, "at 30")]
    assert [e.seq for e in sink.events] == list(range(1, len(sink.events) + 1))


async def test_a_backend_overriding_save_and_publish_still_gets_every_report() -> None:
    """The plain commit is the memory backend's own ``save_and_publish``'s: a subclass that
    overrides that method (to count, to wrap) is called for every report."""
    seen: list[float] = []

    class Counting(MemoryBackend):
        async def save_and_publish(
            self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
        ) -> bool:
            seen.append(record.progress)
            return await super().save_and_publish(lease, record, view_json, finish=finish)

    hub = make_hub(backend=Counting())

    @hub.task("steps")
    async def steps(ctx: TaskContext) -> None:
        for percent in (10, 20, 30):
            await ctx.report(percent)

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("steps", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    assert seen == [0.0, 10, 20, 30, 100.0]  # started, three reports, completed


def test_the_memory_backend_offers_its_plain_commit_only_for_its_own_save_and_publish() -> None:
    own = MemoryBackend()
    commit = own.plain_save_and_publish()
    assert commit == own.save_and_publish_now

    class Wrapping(MemoryBackend):
        async def save_and_publish(
            self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
        ) -> bool:
            return await super().save_and_publish(lease, record, view_json, finish=finish)

    assert Wrapping().plain_save_and_publish() is None
    replaced: Any = MemoryBackend()
    replaced.save_and_publish = Wrapping.save_and_publish  # set on the instance (as tests wrap it)
    assert replaced.plain_save_and_publish() is None


async def test_report_refuses_a_bad_percent() -> None:
    hub = make_hub()
    outcomes: dict[str, str] = {}
    bad: list[Any] = [-0.1, 100.01, math.nan, math.inf, -math.inf, True, "50", None]

    @hub.task("checker")
    async def checker(ctx: TaskContext) -> None:
        for value in bad:
            try:
                await ctx.report(value)
            except ValueError:
                outcomes[repr(value)] = "refused"
            else:
                outcomes[repr(value)] = "accepted"
        for value in (0, 0.0, 50, 100, 100.0):
            await ctx.report(value)
            outcomes[repr(value)] = "accepted"

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("checker", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    assert {repr(v): "refused" for v in bad}.items() <= outcomes.items()
    assert [outcomes[k] for k in ("0", "0.0", "50", "100", "100.0")] == ["accepted"] * 5


def _context(
    start: TaskRecord,
    save_and_publish: Callable[[Lease, TaskRecord, bytes], Awaitable[bool]],
    interval: float,
    group: anyio.abc.TaskGroup,
    save_and_publish_now: Callable[[Lease, TaskRecord, bytes], bool] | None = None,
) -> TaskContext:
    """A context whose writes go to ``save_and_publish`` (a backend's), or its reports' to
    ``save_and_publish_now`` when given, under a lease of ``start``."""

    def on_lost(record: TaskRecord) -> None:
        raise AssertionError(f"no write of these tests is refused: {record!r}")

    lease = Lease(start, str(start.attempt))
    return TaskContext(
        start,
        lease=lease,
        save_and_publish=save_and_publish,
        save_and_publish_now=save_and_publish_now,
        on_lost=on_lost,
        interval=interval,
        spawn=group,
    )


async def _never_awaited(lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
    raise AssertionError("a report with a plain commit awaits none")


async def test_a_plain_commit_that_raises_leaves_the_values_to_the_next_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A report's plain commit (``save_and_publish_now``) that raises is handled as an awaited
    one: logged, the handler goes on, the revision spent, and the next report sends the latest
    values under a newer one."""
    attempts: list[tuple[int, float]] = []

    def commit_now(lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
        attempts.append((record.revision, record.progress))
        if len(attempts) == 1:
            raise RuntimeError("the store hiccuped")
        return True

    start = TaskRecord(id="t", kind="k", name="n", owner=OWNER, status="running", attempt=1)
    async with anyio.create_task_group() as group:
        ctx = _context(start, _never_awaited, 0.0, group, save_and_publish_now=commit_now)
        with caplog.at_level(logging.WARNING, "progressq.worker"):
            await ctx.report(10)
        await ctx.report(20)
        final = await ctx.close()
    assert attempts == [(start.revision + 1, 10.0), (start.revision + 2, 20.0)]
    assert "progress of task t could not be sent" in caplog.text
    assert (final.revision, final.progress) == (start.revision + 2, 20.0)


async def test_a_plain_commit_answered_false_stops_the_reports() -> None:
    """A lease taken over (the plain commit answers False): the worker is told once, and no
    report writes after it."""
    attempts: list[float] = []
    lost: list[TaskRecord] = []

    def commit_now(lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
        attempts.append(record.progress)
        return False

    start = TaskRecord(id="t", kind="k", name="n", owner=OWNER, status="running", attempt=1)
    async with anyio.create_task_group() as group:
        ctx = TaskContext(
            start,
            lease=Lease(start, "1"),
            save_and_publish=_never_awaited,
            save_and_publish_now=commit_now,
            on_lost=lost.append,
            interval=0.0,
            spawn=group,
        )
        for percent in (10, 20, 30):
            await ctx.report(percent)
    assert attempts == [10.0]
    assert [record.progress for record in lost] == [10.0]


async def test_a_handler_reporting_faster_than_the_interval_is_flushed_by_one_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten reports an interval over ten intervals: each interval sends its latest values, the
    last report is not lost, and one flush task does it all (not one task per interval)."""
    clock = [0.0]  # the context's clock, moved by the test only

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return clock[0]

    async def sleep_until(deadline: float) -> None:
        while clock[0] < deadline:
            await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(progressq._context, "time", Clock)
    monkeypatch.setattr(progressq._context, "_sleep_until", sleep_until)
    committed: list[float] = []
    spawned: list[object] = []

    async def commit(lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
        committed.append(record.progress)
        return True

    class CountingGroup:
        def __init__(self, group: anyio.abc.TaskGroup) -> None:
            self._group = group

        def start_soon(self, func: Callable[..., Awaitable[Any]], *args: object) -> None:
            spawned.append(func)
            self._group.start_soon(func, *args)

    start = TaskRecord(id="t", kind="k", name="n", owner=OWNER, status="running", attempt=1)
    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as group:
            ctx = _context(start, commit, 1.0, CountingGroup(group))  # type: ignore[arg-type]
            for step in range(1, 101):
                clock[0] = step / 10
                await ctx.report(step)
                for _ in range(3):  # the flush task, if due, runs now
                    await anyio.lowlevel.checkpoint()
            clock[0] = 12.0  # past the last deadline: the last report goes out
            await wait_until(lambda: committed[-1] == 100)
            clock[0] = 14.0  # an interval with nothing new: the flush task ends
            await wait_until(lambda: not ctx._flush_scheduled)
            await ctx.close()
    assert committed[0] == 1  # the first report is sent at once
    assert committed == sorted(committed)
    assert 10 <= len(committed) <= 12  # one an interval
    assert len(spawned) == 1


async def test_a_flush_that_wakes_late_does_not_emit_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that emitted on its own moves the deadline; a flush already waiting must honour it."""
    interval = 0.05
    committed: list[tuple[float, float]] = []
    gate = anyio.Event()
    real_sleep_until = progressq._context._sleep_until

    async def late_sleep_until(deadline: float) -> None:
        await real_sleep_until(deadline)
        await gate.wait()  # the flush task is slow to get going after its deadline

    monkeypatch.setattr(progressq._context, "_sleep_until", late_sleep_until)

    async def commit(lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
        committed.append((anyio.current_time(), record.progress))
        return True

    start = TaskRecord(id="t", kind="k", name="n", owner=OWNER, status="running", attempt=1)
    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as group:
            ctx = _context(start, commit, interval, group)
            await ctx.report(1)  # emitted at once
            await ctx.report(2)  # within the interval: a flush is scheduled for the deadline
            await anyio.sleep(interval * 1.5)
            await ctx.report(3)  # due: emitted by the report itself, the flush has not run yet
            await ctx.report(4)  # within the new interval
            assert [p for _, p in committed] == [1, 3]
            gate.set()  # the flush runs now: too early for another event
            await wait_until(lambda: len(committed) == 3)
            assert (await ctx.close()).progress == 4
    assert [p for _, p in committed] == [1, 3, 4]
    assert committed[2][0] - committed[1][0] >= interval * 0.9


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=100), st.none() | st.text(max_size=5)),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["asyncio", "trio"]),
    st.booleans(),
)
def test_each_emitted_progress_is_the_running_maximum(
    reports: list[tuple[float, str | None]], backend: str, plain: bool
) -> None:
    """With no rate limit every report emits: its percent is the maximum so far, its message
    the latest; whether the backend's commit is awaited or ``plain`` (the memory backend's)."""

    async def main() -> list[TaskRecord]:
        committed: list[TaskRecord] = []

        def commit_now(lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
            assert view_json == record.view_json()  # the view the backend stores and sends
            committed.append(record)
            return True

        async def commit(lease: Lease, record: TaskRecord, view_json: bytes) -> bool:
            return commit_now(lease, record, view_json)

        start = TaskRecord(id="t", kind="k", name="n", owner=OWNER, status="running", attempt=1, message="started")
        async with anyio.create_task_group() as group:
            ctx = _context(start, commit, 0.0, group, save_and_publish_now=commit_now if plain else None)
            for percent, message in reports:
                await ctx.report(percent, message)
            final = await ctx.close()
            await ctx.report(100, "after close")  # ignored
        committed.append(final)
        return committed

    committed = anyio.run(main, backend=backend)
    assert len(committed) == len(reports) + 1
    best, message = 0.0, "started"
    for record, (percent, new_message) in zip(committed, reports, strict=False):
        best = max(best, percent)
        message = new_message if new_message is not None else message
        assert (record.progress, record.message) == (best, message)
    assert committed[-1].progress == best
    revisions = [r.revision for r in committed[:-1]]
    assert revisions == sorted(set(revisions))


# --- failures, timeouts, retries ------------------------------------------------------------


async def test_a_raising_handler_fails_readably_and_the_worker_lives_on() -> None:
    hub = make_hub(concurrency=1)

    @hub.task("bad")
    async def bad(ctx: TaskContext) -> None:
        await ctx.report(30, "working")
        raise ValueError("the input was odd")

    @hub.task("quiet")
    async def quiet(ctx: TaskContext) -> None:
        raise KeyError

    @hub.task("long")
    async def long(ctx: TaskContext) -> None:
        raise RuntimeError("x" * 5000)

    hub.task("good")(_noop)

    async with hub:
        sink = await attach(hub)
        failing = [await hub.submit(kind, owner=OWNER) for kind in ("bad", "quiet", "long")]
        good = await hub.submit("good", owner=OWNER)
        await wait_until(lambda: sink.has_status(good.id, "completed"))
        assert (await hub.queue.statistics()).running == 0
    errors = []
    for record in failing:
        final = sink.last(record.id)
        assert final is not None
        assert (final.status, final.message) == ("failed", "failed")
        assert final.finished_at is not None
        errors.append(final.error)
    assert errors[0] == "ValueError: the input was odd"
    assert errors[1] == "KeyError"
    assert isinstance(errors[2], str)
    assert errors[2].startswith("RuntimeError: xxx")
    assert len(errors[2]) <= 1000
    assert sink.last(failing[0].id).progress == 30.0  # type: ignore[union-attr]


async def test_a_kind_timeout_fails_the_task() -> None:
    hub = make_hub()
    saw: list[str] = []

    @hub.task("slow", timeout=0.05)
    async def slow(ctx: TaskContext) -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            saw.append("cancelled")
            raise

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("slow", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "failed"))
    final = sink.last(record.id)
    assert final is not None
    assert final.error == "timed out after 0.05 s"
    assert saw == ["cancelled"]


async def test_a_timed_out_attempt_is_retried_with_a_deadline_of_its_own() -> None:
    hub = make_hub()
    attempts: list[int] = []

    @hub.task("stuck once", timeout=0.2, max_attempts=2, retry_backoff=0.01)
    async def stuck_once(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await anyio.sleep(60)  # stopped by its deadline
        await anyio.sleep(0.1)  # the second attempt, well inside a fresh deadline
        return "done"

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("stuck once", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    assert attempts == [1, 2]
    retried = [v for v in sink.views(record.id) if v.status == "queued" and v.attempt == 1]
    assert retried
    assert retried[-1].message.startswith("retrying in ")
    assert retried[-1].error == "timed out after 0.2 s"


async def test_an_owner_cancel_within_the_timeout_is_a_cancel_not_a_timeout() -> None:
    hub = make_hub()
    running = anyio.Event()

    @hub.task("bounded", timeout=0.5, max_attempts=3)
    async def bounded(ctx: TaskContext) -> None:
        running.set()
        await anyio.sleep(60)

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("bounded", owner=OWNER)
        with anyio.fail_after(PATIENCE):
            await running.wait()
        await hub.cancel(record.id, owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "cancelled"))
        await anyio.sleep(0.6)  # past the deadline the attempt had: nothing more happens
    final = sink.last(record.id)
    assert final is not None
    assert (final.status, final.attempt, final.error) == ("cancelled", 1, msgspec.UNSET)
    assert [v.status for v in sink.views(record.id)].count("cancelled") == 1


async def test_max_attempts_retries_and_the_client_sees_queued_again() -> None:
    hub = make_hub()
    attempts: list[int] = []

    @hub.task("flaky", max_attempts=2)
    async def flaky(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        await ctx.report(60, "first try")
        if ctx.attempt == 1:
            raise ConnectionError("network blip")
        return "ok"

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("flaky", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    assert attempts == [1, 2]
    views = sink.views(record.id)
    assert [(v.status, v.attempt) for v in views] == [
        ("queued", 0),
        ("running", 1),
        ("running", 1),
        ("queued", 1),
        ("running", 2),
        ("running", 2),
        ("completed", 2),
    ]
    requeued = views[3]
    assert requeued.error == "ConnectionError: network blip"
    assert "retrying" in requeued.message
    # A new attempt starts from zero and without the old error.
    assert (views[4].progress, views[4].error) == (0.0, msgspec.UNSET)
    assert views[-1].result == "ok"
    assert views[-1].error is msgspec.UNSET


async def test_retries_stop_after_max_attempts() -> None:
    hub = make_hub()
    attempts: list[int] = []

    @hub.task("doomed", max_attempts=3)
    async def doomed(ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"attempt {ctx.attempt}")

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("doomed", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "failed"))
        final = sink.last(record.id)
    assert attempts == [1, 2, 3]
    assert final is not None
    assert (final.attempt, final.error) == (3, "RuntimeError: attempt 3")


# --- cancellation -------------------------------------------------------------------------


async def test_cancel_a_queued_task_it_never_starts() -> None:
    hub = make_hub(concurrency=1)
    gate = anyio.Event()
    started: list[str] = []

    @hub.task("step")
    async def step(ctx: TaskContext) -> None:
        started.append(ctx.name)
        if ctx.name == "blocker":
            await gate.wait()

    async with hub:
        sink = await attach(hub)
        blocker = await hub.submit("step", owner=OWNER, name="blocker")
        await wait_until(lambda: started == ["blocker"])
        waiting = await hub.submit("step", owner=OWNER, name="waiting")
        cancelled = await hub.cancel(waiting.id, owner=OWNER)
        assert cancelled.status == "cancelled"
        assert (await hub.queue.statistics()).queued == 0
        gate.set()
        probe = await hub.submit("step", owner=OWNER, name="probe")
        await wait_until(lambda: sink.has_status(probe.id, "completed"))
        assert sink.has_status(blocker.id, "completed")
    assert started == ["blocker", "probe"]
    assert sink.statuses(waiting.id) == ["queued", "cancelled"]
    final = sink.last(waiting.id)
    assert final is not None
    assert final.finished_at is not None
    assert final.started_at is None


async def test_cancel_a_running_task_it_sees_an_anyio_cancellation() -> None:
    hub = make_hub()
    running = anyio.Event()
    saw: list[str] = []

    @hub.task("endless")
    async def endless(ctx: TaskContext) -> None:
        await ctx.report(5, "going")
        running.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            saw.append("cancelled")
            raise

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("endless", owner=OWNER)
        with anyio.fail_after(PATIENCE):
            await running.wait()
        answer = await hub.cancel(record.id, owner=OWNER)
        assert answer.status == "running"  # requested; the worker finishes it
        await wait_until(lambda: sink.has_status(record.id, "cancelled"))
        assert (await hub.queue.statistics()).running == 0
    assert saw == ["cancelled"]
    final = sink.last(record.id)
    assert final is not None
    assert (final.status, final.message, final.progress) == ("cancelled", "cancelled", 5.0)
    assert final.error is msgspec.UNSET


async def test_a_cancel_requested_before_a_retry_is_not_lost() -> None:
    hub = make_hub()
    attempts: list[int] = []

    @hub.task("flaky", max_attempts=2)
    async def flaky(ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            # The owner cancels, and the attempt fails before the cancellation reaches it.
            await hub.cancel(ctx.task_id, owner=ctx.owner)
            raise RuntimeError("failed anyway")

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("flaky", owner=OWNER)
        await wait_until(lambda: (sink.last(record.id) or record.view()).status in {"cancelled", "completed"})
    assert attempts == [1]
    assert sink.statuses(record.id)[-1] == "cancelled"


async def test_cancel_someone_elses_task_is_not_found() -> None:
    hub = make_hub(concurrency=0)
    hub.task("noop")(_noop)
    async with hub:
        record = await hub.submit("noop", owner=OWNER)
        with pytest.raises(TaskNotFound):
            await hub.cancel(record.id, owner=OTHER)
        with pytest.raises(TaskNotFound):
            await hub.cancel("no-such-task", owner=OWNER)
        with pytest.raises(TaskNotFound):
            await hub.get(record.id, owner=OTHER)
        assert (await hub.get(record.id, owner=OWNER)).status == "queued"
        assert await hub.list(owner=OTHER) == []


async def test_cancel_a_finished_task_is_already_finished() -> None:
    hub = make_hub()
    hub.task("noop")(_noop)
    async with hub:
        sink = await attach(hub)
        done = await hub.submit("noop", owner=OWNER)
        await wait_until(lambda: sink.has_status(done.id, "completed"))
        with pytest.raises(TaskAlreadyFinished):
            await hub.cancel(done.id, owner=OWNER)
    hub2 = make_hub(concurrency=0)
    hub2.task("noop")(_noop)
    async with hub2:
        queued = await hub2.submit("noop", owner=OWNER)
        await hub2.cancel(queued.id, owner=OWNER)
        with pytest.raises(TaskAlreadyFinished):
            await hub2.cancel(queued.id, owner=OWNER)


# --- concurrency and shutdown ---------------------------------------------------------------


async def test_the_concurrency_limit_is_respected() -> None:
    limit = 3
    hub = make_hub(concurrency=limit, max_running_per_owner=limit)
    current = peak = 0

    @hub.task("work")
    async def work(ctx: TaskContext) -> None:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        try:
            await anyio.sleep(0.02)
        finally:
            current -= 1

    async with hub:
        sink = await attach(hub)
        records = [await hub.submit("work", owner=OWNER) for _ in range(12)]
        await wait_until(lambda: all(sink.has_status(r.id, "completed") for r in records))
    assert peak == limit


async def _set(event: anyio.Event) -> None:
    event.set()


async def test_graceful_shutdown_lets_a_running_task_finish() -> None:
    hub = make_hub(concurrency=1, shutdown_grace=10.0)
    started: list[str] = []
    release = anyio.Event()

    @hub.task("short")
    async def short(ctx: TaskContext) -> str:
        started.append(ctx.name)
        await release.wait()  # runs until shutdown has begun, however slow the machine
        return "done"

    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as group, hub:
            sink = await attach(hub)
            running = await hub.submit("short", owner=OWNER, name="running")
            await wait_until(lambda: sink.has_status(running.id, "running"))
            waiting = await hub.submit("short", owner=OWNER, name="waiting")
            # runs at this task's next await, which is inside the hub's exit: shutdown
            # (no new task taken) begins before that exit first awaits
            group.start_soon(_set, release)
    assert started == ["running"]  # no new task is taken once shutdown begins
    assert (await hub.queue.get(running.id)).status == "completed"  # type: ignore[union-attr]
    assert (await hub.queue.get(waiting.id)).status == "queued"  # type: ignore[union-attr]


async def test_a_task_exceeding_the_grace_is_handed_back() -> None:
    hub = make_hub(shutdown_grace=0.05)
    saw: list[str] = []

    @hub.task("endless")
    async def endless(ctx: TaskContext) -> None:
        await ctx.report(40, "deep in")
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            saw.append("cancelled")
            raise

    with anyio.fail_after(PATIENCE):
        async with hub:
            sink = await attach(hub)
            record = await hub.submit("endless", owner=OWNER)
            await wait_until(lambda: any(v.message == "deep in" for v in sink.views(record.id)))
    assert saw == ["cancelled"]
    stored = await hub.queue.get(record.id)
    assert stored is not None
    assert stored.status == "queued"
    assert stored.finished_at is None
    stats = await hub.queue.statistics()
    assert (stats.queued, stats.running) == (1, 0)
    last = sink.last(record.id)
    assert last is not None
    assert last.status == "queued"
    assert [e.seq for e in sink.events] == list(range(1, len(sink.events) + 1))


async def test_a_worker_pool_cancelled_from_outside_hands_its_running_tasks_back() -> None:
    """The pool's own task cancelled (not stopped, no grace): its handlers are stopped and their
    tasks queued again before ``run`` returns. (On asyncio the handlers run in plain tasks, outside
    the pool's task group: the pool must stop them itself.)"""
    from progressq._worker import TaskPolicy, WorkerPool

    started = anyio.Event()
    saw: list[str] = []

    async def endless(record: TaskRecord, ctx: TaskContext) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            saw.append("cancelled")
            raise

    async with MemoryBackend() as backend:
        await backend.queue.enqueue(TaskRecord(id="endless-1", kind="endless", name="endless", owner=OWNER))
        pool = WorkerPool(
            backend=backend,
            processor=endless,
            policy_for=lambda kind: TaskPolicy(),
            concurrency=2,
            progress_interval=0.0,
            shutdown_grace=60.0,
        )
        with anyio.fail_after(PATIENCE):
            async with anyio.create_task_group() as group:
                await group.start(pool.run)
                await started.wait()
                group.cancel_scope.cancel()
        assert saw == ["cancelled"]
        stored = await backend.queue.get("endless-1")
        assert stored is not None
        assert (stored.status, stored.message) == ("queued", "interrupted; queued again")
        assert (await backend.queue.statistics()).running == 0


async def test_an_outcome_is_recorded_even_when_shutdown_cancels_after_the_handler_returned() -> None:
    """Shutdown's cancellation arriving after the handler is done must not leave the task "running"."""
    hub = make_hub(shutdown_grace=0.05)

    @hub.task("stubborn")
    async def stubborn(ctx: TaskContext) -> str:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            return "stopped early"  # swallows the cancellation and returns while it is still pending
        return "slept"

    with anyio.fail_after(PATIENCE):
        async with hub:
            sink = await attach(hub)
            record = await hub.submit("stubborn", owner=OWNER)
            await wait_until(lambda: sink.has_status(record.id, "running"))
    stored = await hub.queue.get(record.id)
    assert stored is not None
    assert (stored.status, stored.result) == ("completed", "stopped early")
    assert (await hub.queue.statistics()).running == 0
    assert sink.statuses(record.id)[-1] == "completed"


# --- bounds -------------------------------------------------------------------------------


async def test_a_full_queue_raises_queue_full_and_stores_nothing() -> None:
    hub = make_hub(backend=MemoryBackend(capacity=2), concurrency=0)
    hub.task("noop")(_noop)
    async with hub:
        sink = await attach(hub)
        first = await hub.submit("noop", owner=OWNER)
        await hub.submit("noop", owner=OWNER)
        with pytest.raises(QueueFull) as refused:
            await hub.submit("noop", owner=OWNER, name="third")
        assert refused.value.retry_after > 0
        assert [r.name for r in await hub.list(owner=OWNER)] == ["noop", "noop"]
        assert len(sink.events) == 2
        assert await hub.registry.current_seq(OWNER) == 2
        assert (await hub.queue.statistics()).queued == 2
        # Cancelling a queued task frees its place.
        await hub.cancel(first.id, owner=OWNER)
        await hub.submit("noop", owner=OWNER, name="third")
        with pytest.raises(QueueFull):
            await hub.submit("noop", owner=OWNER, name="fourth")


async def test_finished_tasks_beyond_max_finished_are_forgotten_oldest_first() -> None:
    hub = make_hub(backend=MemoryBackend(max_finished=2), concurrency=1)
    hub.task("noop")(_noop)
    async with hub:
        sink = await attach(hub)
        records = [await hub.submit("noop", owner=OWNER, name=f"t{i}") for i in range(4)]
        await wait_until(lambda: all(sink.has_status(r.id, "completed") for r in records))
        assert [r.name for r in await hub.list(owner=OWNER)] == ["t3", "t2"]
        for old in records[:2]:
            with pytest.raises(TaskNotFound):
                await hub.get(old.id, owner=OWNER)
        assert (await hub.get(records[3].id, owner=OWNER)).status == "completed"


async def test_finished_tasks_expire_after_retention_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same meaning as on Redis: seconds a finished task stays readable and listed. The
    # backend's clock is moved on by hand, so that a busy machine cannot stretch the waits.
    ahead = [0.0]
    clock = types.SimpleNamespace(monotonic=lambda: time.monotonic() + ahead[0], time=time.time)
    monkeypatch.setattr("progressq.backends._memory_queue.time", clock)
    hub = make_hub(backend=MemoryBackend(retention=10.0), concurrency=1)
    hub.task("noop")(_noop)
    async with hub:
        sink = await attach(hub)
        first = await hub.submit("noop", owner=OWNER, name="first")
        await wait_until(lambda: sink.has_status(first.id, "completed"))
        assert (await hub.get(first.id, owner=OWNER)).status == "completed"
        ahead[0] += 6.0
        second = await hub.submit("noop", owner=OWNER, name="second")
        await wait_until(lambda: sink.has_status(second.id, "completed"))
        ahead[0] += 5.0  # the first is past its retention, the second is not
        assert [r.name for r in await hub.list(owner=OWNER)] == ["second"]
        with pytest.raises(TaskNotFound):
            await hub.get(first.id, owner=OWNER)
        ahead[0] += 6.0
        assert await hub.list(owner=OWNER) == []


def test_memory_backend_refuses_a_retention_that_keeps_nothing() -> None:
    for options in ({"retention": 0}, {"retention": -1.0}, {"max_finished": -1}, {"capacity": 0}):
        with pytest.raises(ConfigurationError):
            MemoryBackend(**options)  # type: ignore[arg-type]


async def test_unfinished_tasks_are_never_forgotten_for_retention() -> None:
    hub = make_hub(backend=MemoryBackend(max_finished=1), concurrency=0)
    hub.task("noop")(_noop)
    async with hub:
        waiting = [await hub.submit("noop", owner=OWNER) for _ in range(3)]
        for record in waiting[:2]:
            await hub.cancel(record.id, owner=OWNER)
        assert [r.id for r in await hub.list(owner=OWNER)] == [waiting[2].id, waiting[1].id]


# --- the registry: history, resume, identities ----------------------------------------------


async def _publish(registry: MemoryClientRegistry, identity: str, count: int) -> list[Event]:
    return [await registry.publish(identity, "taskProgress", f"t{i}", i + 1, b'{"id":"t"}') for i in range(count)]


async def test_events_after_replays_exactly_what_was_missed() -> None:
    registry = MemoryClientRegistry(history_size=3)
    events = await _publish(registry, OWNER, 5)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert await registry.current_seq(OWNER) == 5
    assert await registry.events_after(OWNER, 2) == events[2:]  # the same objects, in order
    assert await registry.events_after(OWNER, 4) == events[4:]
    assert await registry.events_after(OWNER, 5) == []  # up to date
    assert await registry.events_after(OWNER, 1) is None  # seq 2 is no longer held
    assert await registry.events_after(OWNER, 0) is None
    assert await registry.events_after(OWNER, 6) is None  # a seq this registry never gave
    assert await registry.events_after(OWNER, 10**9) is None
    assert await registry.events_after(OTHER, 0) == []
    assert await registry.events_after(OTHER, 1) is None


async def test_events_after_with_the_whole_history() -> None:
    registry = MemoryClientRegistry(history_size=10)
    events = await _publish(registry, OWNER, 4)
    assert await registry.events_after(OWNER, 0) == events
    assert await registry.events_after(OWNER, 3) == events[3:]


async def test_idle_identities_beyond_the_bound_are_forgotten() -> None:
    registry = MemoryClientRegistry(max_identities=2)
    connected = RecordingSink()
    await registry.attach("kept", connected)
    await _publish(registry, "old", 2)
    await _publish(registry, "new", 1)  # the third identity: the idle "old" goes
    assert await registry.current_seq("old") == 0
    assert await registry.events_after("old", 2) is None
    assert await registry.current_seq("new") == 1
    await _publish(registry, "kept", 1)
    assert [e.seq for e in connected.events] == [1]
    await registry.detach("kept", connected)
    await _publish(registry, "newest", 1)  # "new" is idle and less recently active than "kept"
    assert await registry.current_seq("new") == 0
    assert await registry.current_seq("kept") == 1
    assert await registry.current_seq("newest") == 1


async def test_an_identity_that_just_disconnected_counts_as_recently_active() -> None:
    """Being connected is being active: an identity whose connection just went is kept over
    one idle since before then, however long ago its own last event was."""
    registry = MemoryClientRegistry(max_identities=2)
    sink = RecordingSink()
    await registry.attach("left", sink)
    await _publish(registry, "left", 1)
    await _publish(registry, "idle", 1)  # after "left"'s last event...
    await registry.detach("left", sink)  # ...but "left" was connected until now
    await _publish(registry, "third", 1)
    assert await registry.current_seq("idle") == 0
    assert await registry.current_seq("left") == 1


async def test_an_identity_is_not_forgotten_while_it_is_being_created() -> None:
    """When every remembered identity is connected, a new one must still get its own sequence."""
    registry = MemoryClientRegistry(max_identities=2)
    await registry.attach("a", RecordingSink())
    await registry.attach("b", RecordingSink())
    events = await _publish(registry, "c", 3)
    assert [e.seq for e in events] == [1, 2, 3]
    assert await registry.current_seq("c") == 3
    late = RecordingSink()
    await registry.attach("d", late)
    await _publish(registry, "d", 2)
    assert [e.seq for e in late.events] == [1, 2]


async def test_registry_statistics_count_connections_and_identities() -> None:
    registry = MemoryClientRegistry()
    one, two, three = RecordingSink(), RecordingSink(), RecordingSink()
    await registry.attach(OWNER, one)
    await registry.attach(OWNER, two)
    await registry.attach(OWNER, two)  # attaching twice counts once
    await registry.attach(OTHER, three)
    assert (registry.statistics().connections, registry.statistics().clients) == (3, 2)
    await registry.detach(OWNER, one)
    await registry.detach(OWNER, one)
    assert (registry.statistics().connections, registry.statistics().clients) == (2, 2)
    await registry.detach(OWNER, two)
    await registry.detach(OTHER, three)
    assert (registry.statistics().connections, registry.statistics().clients) == (0, 0)
    await _publish(registry, OWNER, 1)
    assert one.events == two.events == []


# --- results and configuration --------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


@pytest.mark.parametrize(
    ("returned", "shown"),
    [
        (None, msgspec.UNSET),
        (0, 0),
        (False, False),
        ("", ""),
        ([], []),
        ({"n": [1, 2.5, "x"]}, {"n": [1, 2.5, "x"]}),
        (Opaque(), "<opaque>"),  # not JSON: its text
        ("y" * 20_000, ("'" + "y" * 999)),  # too big: its text, cut short
    ],
)
async def test_a_result_reaches_the_client_as_a_small_json_summary(returned: Any, shown: Any) -> None:
    hub = make_hub()

    @hub.task("give")
    async def give(ctx: TaskContext) -> Any:
        return returned

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("give", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    final = sink.last(record.id)
    assert final is not None
    assert final.result == shown


def test_bad_configuration_is_refused() -> None:
    for options in ({"concurrency": -1}, {"progress_interval": -0.1}, {"shutdown_grace": -1}):
        with pytest.raises(ConfigurationError):
            Hub(MemoryBackend(), secret=SECRET, **options)
    hub = Hub(MemoryBackend(), secret=SECRET)
    with pytest.raises(ConfigurationError):
        hub.task("x", max_attempts=0)
    with pytest.raises(ConfigurationError):
        hub.task("x", timeout=0)
    hub.task("x")(_noop)
    with pytest.raises(ConfigurationError):
        hub.task("x")(_noop)
    hub.task()(_noop)
    assert hub.kinds == ("x", "_noop")


async def test_a_hub_can_be_opened_again_after_closing() -> None:
    hub = make_hub()
    hub.task("noop")(_noop)
    for _ in range(2):
        async with hub:
            sink = await attach(hub)
            record = await hub.submit("noop", owner=OWNER)
            await wait_until(lambda: sink.has_status(record.id, "completed"))  # noqa: B023
    async with hub:
        with pytest.raises(ConfigurationError):
            await hub.__aenter__()


# --- isolation, as a property ---------------------------------------------------------------

OWNERS = ("alice", "bob", "carol")
operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(OWNERS), st.sampled_from(["ok", "fail", "slow"])),
        st.tuples(st.just("cancel"), st.sampled_from(OWNERS), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("pause"), st.just(""), st.integers(min_value=0, max_value=3)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(operations, st.sampled_from(["asyncio", "trio"]))
def test_owners_see_only_their_own_tasks_in_gapless_order(ops: list[tuple[str, str, Any]], backend: str) -> None:
    async def main() -> tuple[dict[str, RecordingSink], dict[str, str]]:
        hub = make_hub(concurrency=2)

        @hub.task("ok")
        async def ok(ctx: TaskContext) -> None:
            for percent in (20, 40, 10, 80):
                await ctx.report(percent)
                await anyio.sleep(0.0001)

        @hub.task("fail", max_attempts=2)
        async def fail(ctx: TaskContext) -> None:
            await ctx.report(50)
            raise RuntimeError("nope")

        @hub.task("slow")
        async def slow(ctx: TaskContext) -> None:
            await ctx.report(10)
            await anyio.sleep(0.005)

        owners: dict[str, str] = {}
        async with hub:
            sinks = {owner: await attach(hub, owner) for owner in OWNERS}
            submitted: list[str] = []
            for op, owner, arg in ops:
                if op == "submit":
                    record = await hub.submit(arg, owner=owner)
                    owners[record.id] = owner
                    submitted.append(record.id)
                elif op == "cancel" and submitted:
                    task_id = submitted[arg % len(submitted)]
                    try:
                        await hub.cancel(task_id, owner=owner)
                    except TaskNotFound:
                        assert owners[task_id] != owner
                    except TaskAlreadyFinished:
                        assert owners[task_id] == owner
                    else:
                        assert owners[task_id] == owner
                else:
                    await anyio.sleep(arg / 1000)

            def all_finished() -> bool:
                for task_id, owner in owners.items():
                    last = sinks[owner].last(task_id)
                    if last is None or last.status not in {"completed", "failed", "cancelled"}:
                        return False
                return True

            await wait_until(all_finished)
        return sinks, owners

    sinks, owners = anyio.run(main, backend=backend)
    for owner, sink in sinks.items():
        assert [e.seq for e in sink.events] == list(range(1, len(sink.events) + 1))
        mine = {task_id for task_id, who in owners.items() if who == owner}
        assert {e.task_id for e in sink.events} == mine
        for task_id in mine:
            views = sink.views(task_id)
            assert views[0].status == "queued"
            terminal = [v for v in views if v.status in {"completed", "failed", "cancelled"}]
            assert terminal == [views[-1]]  # exactly one terminal event, and it is the last
            for earlier, later in itertools.pairwise(views):
                if earlier.attempt == later.attempt and later.status != "queued":
                    assert later.progress >= earlier.progress


def test_minted_task_ids_never_start_with_a_dash() -> None:
    # ``progressq dead retry APP ID`` would read such an id as an option (1 id in 64 did).
    from progressq._defaults import random_task_id

    pytest.importorskip("redis", reason='needs pip install "progressq[redis]"')
    from progressq.backends.redis._shards import _Shards

    sharded = _Shards("ids", 4, tagged=True)
    ids = [random_task_id() for _ in range(2000)] + [sharded.new_task_id(f"o{n}") for n in range(2000)]
    assert not [task_id for task_id in ids if task_id.startswith("-")]
    assert len(set(ids)) == len(ids)


def test_minted_task_ids_are_sixteen_url_safe_characters_of_fresh_randomness() -> None:
    # the length and alphabet of ``secrets.token_urlsafe(12)``, which minted them before
    from progressq._defaults import random_task_id

    ids = [random_task_id() for _ in range(4000)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", task_id) for task_id in ids)
    assert len(set(ids)) == len(ids)
    assert {"-", "_"} <= set("".join(ids))  # the URL-safe characters, not "+" and "/"


def test_records_made_in_turn_each_get_their_own_aware_utc_creation_time() -> None:
    first = TaskRecord(id="a", kind="k", name="n", owner="o")
    time.sleep(0.002)
    second = TaskRecord(id="b", kind="k", name="n", owner="o")
    assert first.created_at.tzinfo is not None
    assert first.created_at.utcoffset() == timedelta(0)
    assert first.created_at < second.created_at <= utc_now()
