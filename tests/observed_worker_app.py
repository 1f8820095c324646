"""A worker application with metrics and traces, for ``test_observability_processes``.

``progressq worker tests.observed_worker_app:hub`` serves its Prometheus metrics on
``PQ_TEST_METRICS_PORT`` and writes each finished span as a JSON line to ``PQ_TEST_SPANS``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import msgspec
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from progressq.otel import OpenTelemetryHooks
from progressq.prometheus import PrometheusMetrics
from tests.worker_app import make_hub


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines in a file, for another process to read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("ab") as out:
            for span in spans:
                assert span.context is not None
                line = {
                    "name": span.name,
                    "trace_id": span.context.trace_id,
                    "span_id": span.context.span_id,
                    "parent_span_id": span.parent.span_id if span.parent is not None else None,
                    "attributes": dict(span.attributes or {}),
                }
                out.write(msgspec.json.encode(line) + b"\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(os.environ["PQ_TEST_SPANS"]))))
metrics = PrometheusMetrics()
metrics.serve(int(os.environ["PQ_TEST_METRICS_PORT"]))

hub = make_hub(
    os.environ["PQ_TEST_REDIS_URL"],
    os.environ["PQ_TEST_PREFIX"],
    concurrency=2,
    hooks=[metrics, OpenTelemetryHooks(provider)],
)
