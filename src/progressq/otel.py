"""OpenTelemetry traces that follow a task from its submit, through a worker, to its last event.

    from progressq.otel import OpenTelemetryHooks

    hub = Hub(backend, hooks=[OpenTelemetryHooks()])

``hub.submit`` runs in a ``progressq submit <kind>`` span (a producer span, child of whatever
span is current: the HTTP request's, with an instrumented framework); its context is stored
with the task. Each attempt runs in a ``progressq run <kind>`` span (a consumer span), a child
of the submit span even when the worker is another process on another machine; it ends when
the attempt's last event is stored and published, and records the handler's exception. The
handler's own spans are children of the attempt's. Spans carry the task id, kind, attempt
and outcome; never an identity.

Requires the ``otel`` extra: ``pip install "progressq[otel]"``, and an SDK configured by the
application (without one, the API's no-op tracer makes this cost next to nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.otel needs opentelemetry-api: pip install "progressq[otel]"') from exc

from progressq.contracts import TaskRecord
from progressq.hooks import AttemptOutcome, Submission, TaskHooks

__all__ = ("OpenTelemetryHooks",)


class OpenTelemetryHooks(TaskHooks):
    """Spans around submits and attempts, joined across processes through the task's context.

    Args:
        tracer_provider: where spans go; the global provider when omitted.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from progressq import __version__

        self._tracer: Tracer = trace.get_tracer("progressq", __version__, tracer_provider=tracer_provider)

    @contextlib.contextmanager
    def on_submit(self, submission: Submission) -> Iterator[None]:
        with self._tracer.start_as_current_span(
            f"progressq submit {submission.kind}",
            kind=SpanKind.PRODUCER,
            attributes={"progressq.task.kind": submission.kind, "progressq.task.name": submission.name},
        ) as span:
            propagate.inject(submission.context)  # the worker's spans join this trace
            yield
            if submission.record is not None:
                span.set_attribute("progressq.task.id", submission.record.id)

    @contextlib.contextmanager
    def on_attempt(self, record: TaskRecord) -> Iterator[None]:
        with self._tracer.start_as_current_span(
            f"progressq run {record.kind}",
            context=propagate.extract(record.context),
            kind=SpanKind.CONSUMER,
            attributes={
                "progressq.task.id": record.id,
                "progressq.task.kind": record.kind,
                "progressq.task.attempt": record.attempt,
            },
            record_exception=False,  # the handler's exception is recorded in ``attempt_ended``
        ):
            yield

    def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
        span = trace.get_current_span()
        span.set_attribute("progressq.task.outcome", outcome.status)
        if outcome.error is not None:
            span.record_exception(outcome.error)
        if outcome.status in ("failed", "retrying", "lost"):
            span.set_status(Status(StatusCode.ERROR, outcome.status))
