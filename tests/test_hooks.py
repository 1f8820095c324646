"""Hooks around submits and attempts, and the Prometheus and OpenTelemetry hooks built on them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from progressq import AttemptOutcome, Hub, MemoryBackend, Submission, TaskContext, TaskHooks, TaskRecord
from progressq.errors import TooManyTasks, ValidationError
from progressq.otel import OpenTelemetryHooks
from progressq.prometheus import PrometheusMetrics
from tests.test_engine import OWNER, SECRET, RecordingSink, attach, wait_until
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio


class Numbers(msgspec.Struct):
    count: int


class Recorder(TaskHooks):
    def __init__(self) -> None:
        self.steps: list[tuple[str, Any]] = []

    @contextlib.contextmanager
    def on_submit(self, submission: Submission) -> Iterator[None]:
        submission.context["stamp"] = "from-submit"
        self.steps.append(("submit", submission.kind))
        try:
            yield
        except Exception as exc:
            self.steps.append(("refused", type(exc).__name__))
            raise
        assert submission.record is not None
        self.steps.append(("submitted", submission.record.id))

    @contextlib.contextmanager
    def on_attempt(self, record: TaskRecord) -> Iterator[None]:
        self.steps.append(("attempt", (record.id, record.attempt, record.context.get("stamp"))))
        yield
        self.steps.append(("attempt done", record.id))

    def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
        assert outcome.elapsed >= 0
        error = type(outcome.error).__name__ if outcome.error is not None else None
        self.steps.append(("ended", (record.id, outcome.status, error)))


def hub_with(*hooks: TaskHooks, **options: Any) -> Hub:
    options.setdefault("progress_interval", 0.0)
    options.setdefault("shutdown_grace", 1.0)
    hub = Hub(MemoryBackend(), secret=SECRET, hooks=hooks, **options)

    @hub.task("count", max_attempts=2, timeout=5)
    async def count(ctx: TaskContext, params: Numbers) -> int:
        if params.count < 0:
            raise ArithmeticError("negative")
        if params.count == 13 and ctx.attempt == 1:
            raise LookupError("unlucky once")
        if params.count == 99:
            await anyio.sleep(60)  # cancelled by its owner
        if params.count == 7:
            await anyio.sleep(60)
        await ctx.report(50, "half")
        return params.count

    return hub


async def finished(sink: RecordingSink, *records: TaskRecord) -> None:
    def done(record: TaskRecord) -> bool:
        last = sink.last(record.id)
        return last is not None and last.status in ("completed", "failed", "cancelled")

    await wait_until(lambda: all(done(r) for r in records), 30)


async def test_hooks_see_every_submit_and_attempt_with_its_outcome() -> None:
    recorder = Recorder()
    hub = hub_with(recorder)
    async with hub:
        sink = await attach(hub)
        ok = await hub.submit("count", owner=OWNER, params=Numbers(3))
        failing = await hub.submit("count", owner=OWNER, params=Numbers(-1))
        retried = await hub.submit("count", owner=OWNER, params=Numbers(13))
        with pytest.raises(ValidationError):
            await hub.submit("count", owner=OWNER, params={"count": "three"})
        await finished(sink, ok, failing, retried)
    assert ok.context == {"stamp": "from-submit"}
    steps = recorder.steps
    assert steps.count(("submit", "count")) == 4
    assert ("refused", "ValidationError") in steps
    assert ("attempt", (ok.id, 1, "from-submit")) in steps  # the submit's context reached the worker
    ended = [value for step, value in steps if step == "ended"]
    assert sorted(ended) == sorted(
        [
            (ok.id, "completed", None),
            (failing.id, "retrying", "ArithmeticError"),
            (failing.id, "failed", "ArithmeticError"),
            (retried.id, "retrying", "LookupError"),
            (retried.id, "completed", None),
        ]
    )
    for task_id, _, _ in ended:  # each outcome is told inside its attempt
        assert steps.count(("attempt done", task_id)) == sum(1 for e in ended if e[0] == task_id)


async def test_cancelled_timed_out_and_interrupted_attempts_are_told_too() -> None:
    recorder = Recorder()
    hub = hub_with(recorder, shutdown_grace=0.1)
    hub.task("slow", timeout=0.05)(_sleeper)
    async with hub:
        sink = await attach(hub)
        cancelled = await hub.submit("count", owner=OWNER, params=Numbers(99))
        timed_out = await hub.submit("slow", owner=OWNER)
        await wait_until(lambda: sink.has_status(cancelled.id, "running"))
        await hub.cancel(cancelled.id, owner=OWNER)
        await wait_until(lambda: sink.has_status(cancelled.id, "cancelled") and sink.has_status(timed_out.id, "failed"))
        interrupted = await hub.submit("count", owner=OWNER, params=Numbers(7))
        await wait_until(lambda: sink.has_status(interrupted.id, "running"))
    ended = {value[0]: value[1:] for step, value in recorder.steps if step == "ended"}
    assert ended[cancelled.id] == ("cancelled", None)
    assert ended[timed_out.id] == ("failed", "TimeoutError")
    assert ended[interrupted.id] == ("interrupted", None)


async def _sleeper(ctx: TaskContext) -> None:
    await anyio.sleep(60)


async def test_a_failing_hook_is_logged_once_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(TaskHooks):
        def on_submit(self, submission: Submission) -> contextlib.AbstractContextManager[None]:
            raise RuntimeError("exporter down")

        @contextlib.contextmanager
        def on_attempt(self, record: TaskRecord) -> Iterator[None]:
            yield
            raise RuntimeError("exporter down on exit")

        def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
            raise RuntimeError("exporter down at the end")

    recorder = Recorder()
    hub = hub_with(Broken(), recorder)
    with caplog.at_level(logging.ERROR, logger="progressq.hooks"):
        async with hub:
            sink = await attach(hub)
            records = [await hub.submit("count", owner=OWNER, params=Numbers(n)) for n in range(3)]
            await finished(sink, *records)
    sink_statuses = [value[1] for step, value in recorder.steps if step == "ended"]
    assert sink_statuses == ["completed"] * 3  # the other hook and the tasks went on
    failures = [r for r in caplog.records if r.name == "progressq.hooks"]
    assert len(failures) == 1
    assert "Broken" in failures[0].getMessage()


async def test_too_many_tasks_reaches_the_submit_hooks() -> None:
    metrics = PrometheusMetrics()
    hub = hub_with(metrics, concurrency=0, max_active_per_owner=1)
    async with hub:
        await hub.submit("count", owner=OWNER, params=Numbers(1))
        with pytest.raises(TooManyTasks):
            await hub.submit("count", owner=OWNER, params=Numbers(2))
    sample = metrics.registry.get_sample_value
    assert sample("progressq_tasks_submitted_total", {"kind": "count"}) == 1
    assert sample("progressq_tasks_refused_total", {"kind": "count", "reason": "too_many_tasks"}) == 1


async def test_prometheus_counts_tasks_and_attempts_and_serves_them() -> None:
    metrics = PrometheusMetrics()
    hub = hub_with(metrics)
    metrics.watch(hub)
    async with hub:
        sink = await attach(hub)
        records = [await hub.submit("count", owner=OWNER, params=Numbers(n)) for n in (1, -1, 13)]
        with pytest.raises(ValidationError):
            await hub.submit("count", owner=OWNER, params={})
        await finished(sink, *records)
        await hub.submit("count", owner=OWNER, params=Numbers(2), delay=3600)  # scheduled
        transport = httpx.ASGITransport(app=metrics.asgi_app())
        async with httpx.AsyncClient(timeout=PATIENCE, transport=transport, base_url="http://metrics") as http:
            scraped = await http.get("/")
            refused_method = await http.post("/")
    sample = metrics.registry.get_sample_value
    assert sample("progressq_tasks_submitted_total", {"kind": "count"}) == 4
    assert sample("progressq_tasks_refused_total", {"kind": "count", "reason": "invalid_params"}) == 1
    assert sample("progressq_attempts_started_total", {"kind": "count"}) == 5
    assert sample("progressq_attempts_finished_total", {"kind": "count", "status": "completed"}) == 2
    assert sample("progressq_attempts_finished_total", {"kind": "count", "status": "retrying"}) == 2
    assert sample("progressq_attempts_finished_total", {"kind": "count", "status": "failed"}) == 1
    assert sample("progressq_attempt_seconds_count", {"kind": "count", "status": "completed"}) == 2
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    assert 'progressq_tasks_submitted_total{kind="count"} 4.0' in text
    assert "progressq_connections 1.0" in text  # the sink attached by ``finished``
    assert 'progressq_queue_tasks{state="queued"} 1.0' in text  # the scheduled one
    assert 'progressq_queue_tasks{state="scheduled"} 1.0' in text
    assert 'progressq_queue_tasks{state="dead"} 1.0' in text  # the one that failed
    assert "progressq_workers 1.0" in text  # this process's
    assert "progressq_backend_up 1.0" in text
    assert OWNER not in text  # no identity in any label
    assert refused_method.status_code == 405


async def test_traces_join_the_submit_and_each_attempt_and_record_failures() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hub = hub_with(OpenTelemetryHooks(provider))
    seen_inside: list[bool] = []

    @hub.task("inner")
    async def inner(ctx: TaskContext) -> None:
        from opentelemetry import trace

        seen_inside.append(trace.get_current_span().get_span_context().is_valid)

    async with hub:
        sink = await attach(hub)
        good = await hub.submit("count", owner=OWNER, params=Numbers(2))
        bad = await hub.submit("count", owner=OWNER, params=Numbers(-5))
        nested = await hub.submit("inner", owner=OWNER)
        await finished(sink, good, bad, nested)
    spans = exporter.get_finished_spans()
    submits = {s.attributes["progressq.task.id"]: s for s in spans if s.name.startswith("progressq submit")}
    runs = [s for s in spans if s.name.startswith("progressq run")]
    assert set(submits) == {good.id, bad.id, nested.id}
    assert {s.kind for s in submits.values()} == {SpanKind.PRODUCER}
    for run in runs:
        parent = submits[run.attributes["progressq.task.id"]]
        assert run.kind == SpanKind.CONSUMER
        assert run.context.trace_id == parent.context.trace_id
        assert run.parent is not None
        assert run.parent.span_id == parent.context.span_id
    outcomes = sorted((s.attributes["progressq.task.id"], s.attributes["progressq.task.outcome"]) for s in runs)
    assert outcomes == sorted(
        [(good.id, "completed"), (bad.id, "retrying"), (bad.id, "failed"), (nested.id, "completed")]
    )
    failed = [s for s in runs if s.attributes["progressq.task.outcome"] == "failed"]
    assert failed[0].status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in failed[0].events)
    assert seen_inside == [True]  # the handler runs inside its attempt's span
    assert all(OWNER not in str(dict(s.attributes or {})) for s in spans)


def test_delivery_counts_reach_the_metrics() -> None:
    from progressq._counters import delivery
    from progressq._outage import Outage
    from progressq.transport._outbox import Outbox

    metrics = PrometheusMetrics()

    def sample(name: str) -> float:
        value = metrics.registry.get_sample_value(f"progressq_{name}_total")
        assert value is not None
        return value

    before = {name: sample(name) for name in ("messages_sent", "events_merged", "slow_consumers", "backend_errors")}
    outbox = Outbox(limit=2)
    running = b'{"status":"running","attempt":1}'
    outbox.put("first", task_id="t", task_json=running)
    outbox.put("second", task_id="t", task_json=running)
    outbox.put("third", task_id="t", task_json=running)  # full: "first" is merged away
    assert outbox.take() == ["second", "third"]
    for text in ("a", "b", "c", "d"):  # nothing to merge: overflows, counted once
        outbox.put(text)
    Outage().failed("a report", ConnectionError("gone"))
    assert sample("messages_sent") - before["messages_sent"] == 2
    assert sample("events_merged") - before["events_merged"] == 1
    assert sample("slow_consumers") - before["slow_consumers"] == 1
    assert sample("backend_errors") - before["backend_errors"] == 1
    assert delivery.messages_sent == sample("messages_sent")
