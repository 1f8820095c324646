"""The backend conformance suite (progressq.testing) on the memory, Redis and PostgreSQL backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from progressq.backends.memory import MemoryBackend
from progressq.backends.redis import RedisBackend
from progressq.testing import BackendConformance, BackendFactory
from tests.postgres_support import database_url, drop_schema, new_schema
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, require_redis


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
        require_redis()
        prefix = new_prefix("conformance")

        def make(*, capacity: int | None = None, history_size: int | None = None) -> RedisBackend:
            options: dict[str, Any] = {"capacity": capacity}
            if history_size is not None:
                options["history_size"] = history_size
            return RedisBackend.from_url(REDIS_URL, prefix=prefix, **options)

        yield make
        delete_prefix(prefix)


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
