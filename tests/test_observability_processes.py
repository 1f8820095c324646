"""Metrics and traces of one task submitted in this process and run by a worker process on Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from progressq.otel import OpenTelemetryHooks
from progressq.prometheus import PrometheusMetrics
from progressq.testing import RecordingSink
from tests.redis_support import REDIS_URL, free_port, prefixed
from tests.waiting import PATIENCE
from tests.worker_app import make_hub

pytestmark = [pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_task_run_by_another_process_is_measured_and_traced_end_to_end(tmp_path: Path) -> None:
    spans_file, port = tmp_path / "worker-spans.jsonl", free_port()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    web_metrics = PrometheusMetrics()
    with prefixed("observed") as prefix, (tmp_path / "worker.log").open("wb") as log:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
            "PQ_TEST_REDIS_URL": REDIS_URL,
            "PQ_TEST_PREFIX": prefix,
            "PQ_TEST_SPANS": str(spans_file),
            "PQ_TEST_METRICS_PORT": str(port),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "progressq", "worker", "tests.observed_worker_app:hub"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            web = make_hub(REDIS_URL, prefix, concurrency=0, hooks=[web_metrics, OpenTelemetryHooks(provider)])
            web_metrics.watch(web)
            async with web:
                sink = RecordingSink()
                await web.registry.attach("owner-observed", sink)
                record = await web.submit("steps", owner="owner-observed", params={"steps": 3, "delay": 0.05})
                await sink.wait_for(
                    lambda events: any(b'"status":"completed"' in e.task_json for e in events), within=60
                )
                transport = httpx.ASGITransport(app=web_metrics.asgi_app())
                async with httpx.AsyncClient(timeout=PATIENCE, transport=transport, base_url="http://web") as http:
                    web_text = (await http.get("/metrics")).text
            worker_text = await _scrape_until(f"http://127.0.0.1:{port}/", 'status="completed"} 1.0')
        finally:
            worker.terminate()
            worker.wait(30)

    assert 'progressq_tasks_submitted_total{kind="steps"} 1.0' in web_text
    assert 'progressq_queue_tasks{state="queued"} 0.0' in web_text
    assert 'progressq_queue_tasks{state="dead"} 0.0' in web_text
    assert "progressq_workers 1.0" in web_text  # the worker process, seen from the web one
    assert 'progressq_attempts_started_total{kind="steps"} 1.0' in worker_text
    assert 'progressq_attempts_finished_total{kind="steps",status="completed"} 1.0' in worker_text

    (submit,) = [s for s in exporter.get_finished_spans() if s.name == "progressq submit steps"]
    assert submit.context is not None
    worker_spans = [msgspec.json.decode(line) for line in spans_file.read_bytes().splitlines()]
    (run,) = [s for s in worker_spans if s["name"] == "progressq run steps"]
    assert run["trace_id"] == submit.context.trace_id  # one trace across the two processes
    assert run["parent_span_id"] == submit.context.span_id
    assert run["attributes"]["progressq.task.id"] == record.id
    assert run["attributes"]["progressq.task.outcome"] == "completed"


async def _scrape_until(url: str, needle: str, within: float = 60) -> str:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=PATIENCE) as http:
        while True:
            try:
                text = (await http.get(url)).text
            except httpx.TransportError:
                text = ""
            if needle in text or time.monotonic() > deadline:
                return text
            await anyio.sleep(0.1)
