"""The backend conformance suite (progressq.testing) on the memory, Redis and PostgreSQL backends, and
on a memory backend wrapped so that only the contract's required operations are its own: the
capabilities' defaults (``QueueDefaults``, ``BackendDefaults``) are held to the contract too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any

import pytest

from progressq._conformance_support import uses_default
from progressq.backends.memory import MemoryBackend, MemoryClientRegistry, MemoryTaskQueue
from progressq.contracts import (
    BackendDefaults,
    CancelOutcome,
    Lease,
    QueueDefaults,
    QueueStatistics,
    TaskRecord,
)
from progressq.testing import BackendConformance, BackendFactory
from tests.postgres_support import database_url, drop_schema, new_schema
from tests.redis_cluster_support import SharedCluster
from tests.redis_support import redis_backends


class TestMemoryBackend(BackendConformance):
    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def make_backend(self) -> BackendFactory:
        def make(*, capacity: int | None = None, history_size: int | None = None) -> MemoryBackend:
            options: dict[str, Any] = {}
            if capacity is not None:
                options["capacity"] = capacity
            if history_size is not None:
                options["history_size"] = history_size
            return MemoryBackend(**options)

        return make


@pytest.mark.redis
class TestRedisBackend(BackendConformance):
    shared_state = True

    @pytest.fixture
    def make_backend(self) -> Iterator[BackendFactory]:
        with redis_backends("conformance") as make:  # capacity, history_size: None is its default
            yield make


@pytest.mark.redis
class TestShardedRedisBackend(BackendConformance):
    """Keys spread over four hash-tagged shards on one Redis: what Redis Cluster gets."""

    shared_state = True

    @pytest.fixture
    def make_backend(self) -> Iterator[BackendFactory]:
        with redis_backends("sharded", shards=4) as make:
            yield make


@pytest.mark.redis_cluster
class TestRedisClusterBackend(BackendConformance):
    shared_state = True

    @pytest.fixture
    def make_backend(self, redis_cluster: SharedCluster) -> Iterator[BackendFactory]:
        with redis_backends("conformance", url=redis_cluster.url) as make:
            yield make


@pytest.mark.postgres
class TestPostgresBackend(BackendConformance):
    shared_state = True

    @pytest.fixture
    def make_backend(self) -> Iterator[BackendFactory]:
        url = database_url()
        from progressq.backends.postgres import PostgresBackend

        schema = new_schema("conformance")

        def make(*, capacity: int | None = None, history_size: int | None = None) -> PostgresBackend:
            options: dict[str, Any] = {"capacity": capacity}
            if history_size is not None:
                options["history_size"] = history_size
            return PostgresBackend.from_url(url, schema=schema, **options)

        yield make
        drop_schema(schema)


class RequiredOnlyQueue(QueueDefaults):
    """A memory queue's required operations, and nothing more: every capability is the default."""

    def __init__(self, inner: MemoryTaskQueue) -> None:
        self._inner = inner

    async def enqueue(self, record: TaskRecord) -> None:
        await self._inner.enqueue(record)

    async def lease(self) -> Lease:
        return await self._inner.lease()

    async def save(self, lease: Lease, record: TaskRecord) -> bool:
        return await self._inner.save(lease, record)

    async def extend(self, lease: Lease) -> bool:
        return await self._inner.extend(lease)

    async def finish(self, lease: Lease) -> None:
        await self._inner.finish(lease)

    async def release(self, lease: Lease, record: TaskRecord) -> bool:
        return await self._inner.release(lease, record)

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self._inner.get(task_id)

    async def list_by_owner(self, owner: str, limit: int | None = None) -> Sequence[TaskRecord]:
        return await self._inner.list_by_owner(owner, limit)

    async def request_cancel(self, task_id: str, owner: str) -> CancelOutcome | None:
        return await self._inner.request_cancel(task_id, owner)

    def watch_cancellations(self) -> AsyncIterator[str]:
        return self._inner.watch_cancellations()

    async def statistics(self) -> QueueStatistics:
        return await self._inner.statistics()


class RequiredOnlyBackend(BackendDefaults):
    """A bundle with the required members only: submits and saves use the defaults."""

    def __init__(self, queue: RequiredOnlyQueue, registry: MemoryClientRegistry) -> None:
        self._queue = queue
        self._registry = registry

    @property
    def queue(self) -> RequiredOnlyQueue:
        return self._queue

    @property
    def registry(self) -> MemoryClientRegistry:
        return self._registry

    async def ping(self) -> bool:
        return True

    async def __aenter__(self) -> RequiredOnlyBackend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


class TestContractDefaults(BackendConformance):
    @pytest.fixture
    def make_backend(self) -> BackendFactory:
        def make(*, capacity: int | None = None, history_size: int | None = None) -> RequiredOnlyBackend:
            queue = MemoryTaskQueue(capacity=capacity or 10_000)
            return RequiredOnlyBackend(
                RequiredOnlyQueue(queue), MemoryClientRegistry(history_size=history_size or 1000)
            )

        return make


def test_the_wrapped_backend_has_only_defaults_for_every_capability() -> None:
    backend = RequiredOnlyBackend(RequiredOnlyQueue(MemoryTaskQueue()), MemoryClientRegistry())
    for name in (
        "lease_many",
        "watch_lost_leases",
        "limit_running_per_owner",
        "dead_letters",
        "forget_dead",
        "task_with_key",
        "claim_slot",
        "new_task_id",
    ):
        assert uses_default(backend.queue, name), name
    for name in ("enqueue_and_announce", "save_and_publish", "plain_save_and_publish"):
        assert uses_default(backend, name), name
    assert backend.plain_save_and_publish() is None  # every report awaits the default's coroutine
