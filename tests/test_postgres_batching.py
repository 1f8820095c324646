"""Group commit on PostgreSQL: the submits and saves one process makes at the same moment
commit in one transaction, each keeping its own outcome. Against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from tests.postgres_support import database_url, schema_of_its_own
from tests.waiting import PATIENCE

psycopg = pytest.importorskip("psycopg", reason='needs pip install "progressq[postgres]"')

from progressq.backends.postgres import PostgresBackend  # noqa: E402
from progressq.contracts import Lease, TaskRecord  # noqa: E402
from progressq.errors import ConfigurationError  # noqa: E402
from progressq.testing import RecordingSink  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # psycopg's async API


@pytest.fixture
def schema() -> Iterator[str]:
    with schema_of_its_own("batching") as name:
        yield name


def _record(owner: str, n: int) -> TaskRecord:
    return TaskRecord(id=f"task-{n}", kind="work", name=f"task {n}", owner=owner)


async def _all(*calls: Any) -> list[Any]:
    """Run the calls at once (so that they meet in one batch); their outcomes, errors included."""
    outcomes: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await calls[i]
        except Exception as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as group:
        for i in range(len(calls)):
            group.start_soon(one, i)
    return outcomes


async def test_concurrent_writes_commit_together_each_with_its_own_outcome(schema: str) -> None:
    async with PostgresBackend.from_url(database_url(), schema=schema) as backend:
        batcher = backend.queue._batcher
        sinks = {owner: RecordingSink() for owner in ("alice", "bob")}
        for owner, sink in sinks.items():
            await backend.registry.attach(owner, sink)
        records = [_record(("alice", "bob")[n % 2], n) for n in range(20)]
        before = batcher.batches
        submitted = await _all(*(backend.enqueue_and_announce(r, max_unfinished=None) for r in records))
        assert submitted == [None] * 20
        assert batcher.batches - before < 20  # some commits carried several submits

        leases: list[Lease] = []
        with anyio.fail_after(PATIENCE):
            while len(leases) < 20:
                leases += await backend.queue.lease_many(20 - len(leases))
        # one of them is fenced out: an attempt that is not the lease's
        stale = Lease(leases[0].record.evolve(attempt=leases[0].record.attempt + 1), "stale")
        saves = [lease.record.evolve(status="running") for lease in leases]
        before = batcher.batches
        stored = await _all(
            backend.save_and_publish(stale, saves[0], saves[0].view_json()),
            *(backend.save_and_publish(lease, rec, rec.view_json()) for lease, rec in zip(leases, saves, strict=True)),
        )
        assert stored == [False] + [True] * 20
        assert batcher.batches - before < 21

        # every owner heard each of its tasks queued, then running, numbered without a gap
        with anyio.fail_after(PATIENCE):
            while sum(len(sink.events) for sink in sinks.values()) < 40:
                await anyio.sleep(0.02)
        for owner, sink in sinks.items():
            seqs = [event.seq for event in sink.events]
            assert seqs == list(range(1, 21))
            mine = {r.id for r in records if r.owner == owner}
            assert [e.kind for e in sink.events].count("taskQueued") == 10
            assert {e.task_id for e in sink.events} == mine
            for task_id in mine:  # each task's "running" after its "queued"
                kinds = [e.kind for e in sink.events if e.task_id == task_id]
                assert kinds == ["taskQueued", "taskProgress"]


async def test_a_write_that_fails_in_a_batch_fails_alone(schema: str) -> None:
    async with PostgresBackend.from_url(database_url(), schema=schema) as backend:
        await backend.queue.enqueue(_record("alice", 0))
        batcher = backend.queue._batcher
        writes = batcher.writes
        # task-0 exists: its submit breaks the primary key, which would undo the whole batch
        outcomes = await _all(*(backend.enqueue_and_announce(_record("bob", n), max_unfinished=None) for n in range(6)))
        assert isinstance(outcomes[0], ConfigurationError)
        assert outcomes[1:] == [None] * 5
        assert batcher.writes - writes == 5  # committed: the five others, run again each alone
        with psycopg.connect(database_url(), autocommit=True) as conn:
            rows = conn.execute(f'SELECT owner, count(*) FROM "{schema}".tasks GROUP BY owner ORDER BY owner')
            assert rows.fetchall() == [("alice", 1), ("bob", 5)]
