"""Prometheus metrics for a hub: tasks, attempts, queue depth and connections.

    from progressq.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics()
    hub = Hub(backend, hooks=[metrics])
    metrics.watch(hub)                              # queue depth and connections, read at scrape
    app.mount("/metrics", metrics.asgi_app())       # Starlette / FastAPI; see the how-to for Litestar

A worker process without a web server serves its own with ``metrics.serve(port)``.
Labels are the task kind and outcome, never an identity. Requires the ``prometheus``
extra: ``pip install "progressq[prometheus]"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.prometheus needs prometheus-client: pip install "progressq[prometheus]"') from exc

from progressq._counters import delivery
from progressq.contracts import TaskRecord
from progressq.errors import DuplicateTask, QueueFull, TooManyTasks, ValidationError
from progressq.hooks import AttemptOutcome, Submission, TaskHooks

if TYPE_CHECKING:
    from progressq.hub import Hub

__all__ = ("PrometheusMetrics",)

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
# by type, so that a subclass an application raises (or a renamed one) keeps its reason
_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (ValidationError, "invalid_params"),
    (TooManyTasks, "too_many_tasks"),
    (QueueFull, "queue_full"),
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class PrometheusMetrics(TaskHooks):
    """Counters and histograms fed by the hub's hooks, gauges read from a watched hub.

    Args:
        registry: where the metrics are registered; a registry of their own when omitted
            (pass ``prometheus_client.REGISTRY`` to join the process's default one).
        namespace: the metric names' prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "progressq") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._hubs: list[Hub] = []

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, namespace=namespace, registry=self.registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, namespace=namespace, registry=self.registry)

        self.submitted = counter("tasks_submitted", "Tasks queued by hub.submit.", ("kind",))
        self.refused = counter("tasks_refused", "Submissions refused, by reason.", ("kind", "reason"))
        self.started = counter("attempts_started", "Attempts a worker started.", ("kind",))
        self.ended = counter(
            "attempts_finished",
            "Attempts that ended, by outcome (completed, failed, retrying, cancelled, interrupted, lost).",
            ("kind", "status"),
        )
        self.attempt_seconds = Histogram(
            "attempt_seconds",
            "How long attempts ran, by outcome.",
            ("kind", "status"),
            namespace=namespace,
            registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.queue = gauge(
            "queue_tasks",
            "Tasks in the backend's queue by state (at the last scrape): queued (scheduled among "
            "them), running, scheduled (waiting for their time) and dead (failed, on the list).",
            ("state",),
        )
        self.workers = gauge("workers", "Worker processes taking tasks from the backend (at the last scrape).")
        self.connections = gauge("connections", "Live WebSocket and event-stream connections in this process.")
        self.clients = gauge("clients", "Identities with at least one live connection in this process.")
        self.backend_up = gauge("backend_up", "1 when the backend answered the last scrape, else 0.")
        self.registry.register(_DeliveryCollector(namespace))

    # --- hooks ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def on_submit(self, submission: Submission) -> Iterator[None]:
        try:
            yield
        except DuplicateTask:
            raise  # a racing submit with its key queued the task: the hub answers with that one
        except Exception as exc:
            reason = next((name for kind, name in _REFUSALS if isinstance(exc, kind)), "error")
            self.refused.labels(submission.kind, reason).inc()
            raise
        self.submitted.labels(submission.kind).inc()

    @contextlib.contextmanager
    def on_attempt(self, record: TaskRecord) -> Iterator[None]:
        self.started.labels(record.kind).inc()
        yield

    def attempt_ended(self, record: TaskRecord, outcome: AttemptOutcome) -> None:
        self.ended.labels(record.kind, outcome.status).inc()
        self.attempt_seconds.labels(record.kind, outcome.status).observe(outcome.elapsed)

    # --- exposition ----------------------------------------------------------------------

    def watch(self, hub: Hub) -> None:
        """Read ``hub``'s queue depth, connections and backend health at every scrape of
        :meth:`asgi_app` (and count its hooks' events, if it was built with this as a hook)."""
        self._hubs.append(hub)

    async def refresh(self) -> None:
        """Read the watched hubs' gauges now (what a scrape of :meth:`asgi_app` does)."""
        connections = clients = 0
        counts: dict[str, int] = {}
        up = 1
        for hub in self._hubs:
            registry = hub.registry.statistics()
            connections += registry.connections
            clients += registry.clients
            try:
                queue = await hub.queue.statistics()
            except Exception:
                up = 0
                continue
            for state in ("queued", "running", "scheduled", "dead", "workers"):
                count = getattr(queue, state)
                if count is not None:  # a count the backend keeps (the last three are optional)
                    counts[state] = counts.get(state, 0) + count
        for state in ("queued", "running", "scheduled", "dead"):
            if state in counts or state in ("queued", "running"):
                self.queue.labels(state).set(counts.get(state, 0))
        if "workers" in counts:
            self.workers.set(counts["workers"])
        self.connections.set(connections)
        self.clients.set(clients)
        self.backend_up.set(up)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def asgi_app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """An ASGI app answering every GET with the metrics, refreshed first."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":  # lifespan and websockets: nothing to do here
                return
            if scope.get("method") not in ("GET", "HEAD"):
                await _answer(send, 405, b"method not allowed\n", "text/plain; charset=utf-8")
                return
            await self.refresh()
            await _answer(send, 200, self.render(), CONTENT_TYPE_LATEST)

        return app

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve the metrics over HTTP from a thread (for a worker process with no web app).
        Gauges of watched hubs are not refreshed there: scrape them from a web process."""
        start_http_server(port, addr, registry=self.registry)


class _DeliveryCollector(Collector):
    """This process's delivery counts (:mod:`progressq._counters`), read at each scrape."""

    _COUNTS = (
        ("messages_sent", "Messages handed to clients' connections (events, snapshots, replies)."),
        ("events_merged", "Queued progress events replaced by a newer one before a slow client read them."),
        ("slow_consumers", "Connections closed because their send buffer stayed full (they resume)."),
        ("backend_errors", "Operations that failed because the backend did not answer."),
    )

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace

    def collect(self) -> Iterator[Metric]:
        for name, doc in self._COUNTS:
            yield CounterMetricFamily(f"{self._namespace}_{name}", doc, value=getattr(delivery, name))


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
