"""The Redis backend on Redis Cluster while one master hangs (SIGSTOP: its connections stay
open and unanswered, and no failover comes, as the cluster's node timeout is long): the other
shards are served, health holds, and everything goes on once the master answers again."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from progressq import Hub, TaskContext
from progressq.backends.redis import RedisBackend
from tests.redis_cluster_support import LocalCluster, delete_cluster_prefix, local_cluster
from tests.redis_support import new_prefix
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.redis_cluster, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


@pytest.fixture(scope="module")
def still_cluster() -> Iterator[LocalCluster]:
    """A cluster of its own whose nodes never fail a hung master over (within a test)."""
    with local_cluster(node_timeout_ms=600_000) as cluster:
        yield cluster


def _shards_on(cluster: LocalCluster, backend: RedisBackend, port: int) -> frozenset[int]:
    return frozenset(n for n, keys in enumerate(backend._shards.keys) if cluster.master_of(keys.stream) == port)


@pytest.mark.timeout(300)
async def test_a_hung_master_degrades_its_shards_not_the_health(
    still_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = new_prefix("health")
    caplog.set_level(logging.INFO, "progressq.redis")
    try:
        async with RedisBackend.from_url(still_cluster.url, prefix=prefix) as backend:
            assert await backend.ping()
            assert backend.degraded_shards == frozenset()
            victim = still_cluster.master_of(backend._shards.keys[0].stream)
            on_victim = _shards_on(still_cluster, backend, victim)
            still_cluster.pause(victim)
            try:
                assert await backend.ping()  # the other masters serve their shards
                assert backend.degraded_shards == on_victim
                assert "do not answer" in caplog.text
            finally:
                still_cluster.resume(victim)
            with anyio.fail_after(PATIENCE):
                while not (await backend.ping() and not backend.degraded_shards):
                    await anyio.sleep(0.2)
            assert "answer again" in caplog.text
    finally:
        delete_cluster_prefix(still_cluster.url, prefix)


@pytest.mark.timeout(300)
async def test_a_hung_master_holds_up_only_its_own_shards(still_cluster: LocalCluster) -> None:
    """While one master hangs: the leases of tasks on the other shards are kept (none runs
    twice) and workers take those shards' new tasks; once it answers, everything completes."""
    prefix = new_prefix("hang")
    options: dict[str, Any] = {"prefix": prefix, "lease_timeout": 3.0}
    web = Hub(RedisBackend.from_url(still_cluster.url, **options), secret="hang-test-secret-000001", concurrency=0)
    workers = Hub(RedisBackend.from_url(still_cluster.url, **options), secret="hang-test-secret-000001", concurrency=8)
    runs: Counter[str] = Counter()
    release = anyio.Event()
    for hub in (web, workers):

        @hub.task("held")
        async def held(ctx: TaskContext) -> None:
            runs[ctx.task_id] += 1
            await release.wait()

    backend = web.backend
    assert isinstance(backend, RedisBackend)
    try:
        async with web, workers:
            victim = still_cluster.master_of(backend._shards.keys[0].stream)
            on_victim = _shards_on(still_cluster, backend, victim)
            owners = [f"owner-{n}" for n in range(40)]
            hung_owner = next(o for o in owners if backend._shards.of_owner(o) in on_victim)
            healthy = [o for o in owners if backend._shards.of_owner(o) not in on_victim][:3]
            first = [(await web.submit("held", owner=owner)).id for owner in [*healthy, hung_owner]]
            with anyio.fail_after(PATIENCE):
                while set(runs) != set(first):
                    await anyio.sleep(0.1)
            still_cluster.pause(victim)
            try:
                await anyio.sleep(3 * 3.0)  # three lease timeouts: unkept leases would be taken over
                later = [(await web.submit("held", owner=owner)).id for owner in healthy]
                with anyio.fail_after(PATIENCE):
                    while not set(later) <= set(runs):
                        await anyio.sleep(0.1)
                assert all(runs[task_id] == 1 for task_id in [*first[:-1], *later]), runs
            finally:
                still_cluster.resume(victim)
            release.set()
            for task_id, owner in zip([*first, *later], [*healthy, hung_owner, *healthy], strict=True):
                with anyio.fail_after(PATIENCE):
                    while (await web.get(task_id, owner=owner)).status != "completed":
                        await anyio.sleep(0.2)
            assert all(runs[task_id] == 1 for task_id in [*first[:-1], *later]), runs
    finally:
        delete_cluster_prefix(still_cluster.url, prefix)
