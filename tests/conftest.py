from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from progressq._outage import backend_outage
from progressq.transport import TransportSettings
from tests.apps import FRAMEWORKS, RunningServer, build_app, make_hub, serve
from tests.postgres_support import database_url, drop_schema, drop_session_database, new_schema
from tests.redis_cluster_support import SharedCluster, delete_cluster_prefix, shared_cluster
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, require_redis

# Property tests share the machine with everything else: Hypothesis's check that inputs are
# generated fast enough (about a second for a few examples) fails a test for the machine's load,
# not for the property, so it is off everywhere; each test still sets its own example budget.
settings.register_profile("progressq", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("progressq")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Core tests run on both event loops (override to asyncio where a client needs it)."""
    return str(request.param)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    """Each adapter; skipped when its framework (an extra) is not installed."""
    pytest.importorskip(str(request.param), reason=f'needs pip install "progressq[{request.param}]"')
    return str(request.param)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis_cluster),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def backend_kind(request: pytest.FixtureRequest) -> str:
    """The integration suite runs on each backend: memory, Redis on 127.0.0.1:6379, a Redis
    Cluster of its own and PostgreSQL on 127.0.0.1:5432."""
    if request.param == "redis":
        require_redis()
    if request.param == "postgres":
        database_url()  # skips without a server
    return str(request.param)


@pytest.fixture
def make_server(framework: str, backend_kind: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start a real server with the given transport settings / hub options, on ``backend_kind``
    (unless the test passes its own ``backend=``)."""
    prefixes: list[str] = []
    cluster_prefixes: list[str] = []
    schemas: list[str] = []
    cluster: SharedCluster | None = (
        request.getfixturevalue("redis_cluster") if backend_kind == "redis-cluster" else None
    )

    @contextlib.contextmanager
    def factory(
        settings: TransportSettings | None = None,
        *,
        uvicorn: dict[str, Any] | None = None,
        send_buffer: int | None = None,
        **hub_options: Any,
    ) -> Iterator[RunningServer]:
        if backend_kind == "redis" and "backend" not in hub_options:
            from progressq.backends.redis import RedisBackend

            prefixes.append(new_prefix("integration"))
            history_size = hub_options.pop("history_size", 1000)
            hub_options["backend"] = RedisBackend.from_url(REDIS_URL, prefix=prefixes[-1], history_size=history_size)
        if cluster is not None and "backend" not in hub_options:
            from progressq.backends.redis import RedisBackend

            cluster_prefixes.append(new_prefix("integration"))
            history_size = hub_options.pop("history_size", 1000)
            hub_options["backend"] = RedisBackend.from_url(
                cluster.url, prefix=cluster_prefixes[-1], history_size=history_size
            )
        if backend_kind == "postgres" and "backend" not in hub_options:
            from progressq.backends.postgres import PostgresBackend

            schemas.append(new_schema("integration"))
            history_size = hub_options.pop("history_size", 1000)
            hub_options["backend"] = PostgresBackend.from_url(
                database_url(), schema=schemas[-1], history_size=history_size
            )
        hub = make_hub(**hub_options)
        app = build_app(framework, hub, settings or TransportSettings())
        with serve(app, hub, send_buffer=send_buffer, **(uvicorn or {})) as running:
            yield running

    yield factory
    for prefix in prefixes:
        delete_prefix(prefix)
    for prefix in cluster_prefixes:
        assert cluster is not None
        delete_cluster_prefix(cluster.url, prefix)
    for schema in schemas:
        drop_schema(schema)


@pytest.fixture
def server(make_server: Any) -> Iterator[RunningServer]:
    with make_server() as running:
        yield running


@pytest.fixture(autouse=True)
def no_outage_left_over() -> Iterator[None]:
    """Each test starts without an outage another test's backend left behind (there is one
    outage state per process)."""
    backend_outage.reset()
    yield
    backend_outage.reset()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedCluster]:
    """The test run's Redis Cluster (three masters, three replicas), started by the first test
    that needs it and stopped when the run is done; skipped without redis-server."""
    # the run's temporary folder, which its xdist workers share (each has one of its own below)
    run_folder = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_folder = run_folder.parent
    with shared_cluster(run_folder) as cluster:
        yield cluster


@pytest.fixture(scope="session", autouse=True)
def postgres_database_dropped() -> Iterator[None]:
    """The session's PostgreSQL database (made by the first test that needs one) is dropped
    when the session ends."""
    yield
    drop_session_database()
