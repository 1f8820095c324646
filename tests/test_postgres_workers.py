"""Worker processes (``progressq worker``) on one PostgreSQL database: a worker killed with
SIGKILL loses no task, a paused one whose lease was taken over reaches no client, one stopped
with SIGTERM hands its task back, delayed tasks run once while workers are killed and
restarted, and the status command counts them.

The same scenarios as on Redis (``test_redis_workers``), with real ``progressq worker
tests.worker_app:hub`` processes in a schema of the test's own.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from progressq import Hub
from progressq.testing import RecordingSink, check_task_events
from tests.postgres_support import database_url, schema_of_its_own
from tests.test_redis_workers import (
    LEASE_TIMEOUT,
    Worker,
    _any_sink_event,
    _cli,
    _pid_in,
    _terminal,
    _view,
    _wait_event,
)
from tests.waiting import PATIENCE
from tests.worker_app import make_hub

pytestmark = [pytest.mark.postgres, pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def schema() -> Iterator[str]:
    with schema_of_its_own("workers") as name:
        yield name


@pytest.fixture
def start_worker(schema: str, tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def start(concurrency: int = 3, grace: float = 5.0) -> Worker:
        log = tmp_path / f"worker-{len(workers)}.log"
        worker = Worker(schema, log, concurrency=concurrency, grace=grace, url=database_url())
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


def _client_hub(schema: str) -> Hub:
    return make_hub(database_url(), schema, lease_timeout=LEASE_TIMEOUT, concurrency=0)


async def test_kill_9_of_a_worker_loses_no_task(schema: str, start_worker: Any) -> None:
    doomed = start_worker(concurrency=3)
    survivor = start_worker(concurrency=3)
    async with _client_hub(schema) as hub:
        owners = ["alice", "bob", "carol"]
        sinks = {owner: RecordingSink() for owner in owners}
        for owner, sink in sinks.items():
            await hub.registry.attach(owner, sink)
        tasks = {
            owner: [(await hub.submit("steps", owner=owner, payload={"steps": 20, "delay": 0.1})).id for _ in range(3)]
            for owner in owners
        }
        # wait until the doomed worker is in the middle of some task, then kill it outright
        await _any_sink_event(sinks, lambda e: _pid_in(e) == doomed.pid and _view(e)["progress"] >= 20)
        doomed.signal(signal.SIGKILL)
        for owner, sink in sinks.items():
            expected = set(tasks[owner])
            await sink.wait_for(lambda events: set(_terminal(events)) >= expected, 90)  # noqa: B023
        await anyio.sleep(0.5)  # anything stray would arrive now
        rerun = 0
        for owner, sink in sinks.items():
            assert sink.seqs == list(range(1, len(sink.seqs) + 1)), owner
            assert {e.task_id for e in sink.events} == set(tasks[owner]), owner
            check_task_events(sink.events)
            for view in _terminal(sink.events).values():
                assert view["status"] == "completed"
                if view["attempt"] > 1:
                    rerun += 1
                    assert view["result"]["pid"] == survivor.pid
        assert rerun >= 1  # the killed worker's tasks ran again elsewhere
        for owner in owners:
            assert [r.status for r in await hub.list(owner=owner)] == ["completed"] * 3
        statistics = await hub.queue.statistics()
        assert (statistics.queued, statistics.running) == (0, 0)


async def test_a_paused_worker_whose_lease_was_taken_reaches_no_client(schema: str, start_worker: Any) -> None:
    # Both workers are up before the task is queued (one that starts only now may take longer
    # on a busy machine than the task does); whichever takes it is paused, the other takes over.
    workers = [start_worker(concurrency=1), start_worker(concurrency=1)]
    async with _client_hub(schema) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        task = await hub.submit("steps", owner="alice", payload={"steps": 50, "delay": 0.08})
        running = await _wait_event(sink, lambda e: _pid_in(e) is not None and _view(e)["progress"] >= 10)
        paused, taker = workers if _pid_in(running) == workers[0].pid else workers[::-1]
        paused.signal(signal.SIGSTOP)
        try:
            takeover = await _wait_event(sink, lambda e: _view(e)["attempt"] == 2 and _view(e)["status"] == "running")
        except TimeoutError:
            activity = _sql(
                "SELECT pid, state, wait_event_type, left(query, 120) FROM pg_stat_activity"
                " WHERE datname = current_database()"
            )
            raise AssertionError(
                f"no takeover; sessions: {activity}\npaused:\n{paused.text()}\ntaker:\n{taker.text()}"
            ) from None
        paused.signal(signal.SIGCONT)  # it wakes up believing it still runs the task
        await sink.wait_for(lambda events: task.id in _terminal(events), 60)
        # the paused worker learnt of it (a write refused, or its heartbeat) and stopped
        with anyio.fail_after(PATIENCE):
            while "its handler was stopped" not in paused.text():
                await anyio.sleep(0.1)
        await anyio.sleep(0.5)
        after = sink.events[sink.events.index(takeover) :]
        assert all(_view(e)["attempt"] == 2 for e in after), [(e.seq, _view(e)["attempt"]) for e in after]
        assert all(_pid_in(e) in (None, taker.pid) for e in after)
        check_task_events(sink.events)
        final = _terminal(sink.events)[task.id]
        assert (final["status"], final["attempt"], final["result"]["pid"]) == ("completed", 2, taker.pid)
        assert sink.seqs == list(range(1, len(sink.seqs) + 1))


# Its own wait is PATIENCE * 2 after eight worker restarts, each a process start: more than the file's 180 s.
@pytest.mark.timeout(360)
async def test_delayed_tasks_run_once_while_workers_are_killed_9_and_restarted(schema: str, start_worker: Any) -> None:
    workers = [start_worker(concurrency=2) for _ in range(3)]
    killed: set[int] = set()
    async with _client_hub(schema) as hub:
        _sql(f'CREATE TABLE "{schema}".test_runs (task_id text, attempt integer, pid integer)')
        owners = ["alice", "bob", "carol", "dave"]
        tasks = [
            await hub.submit("count", owner=owners[n % 4], payload={"delay": 0.05}, delay=1.0 + (n % 40) * 0.15)
            for n in range(80)
        ]  # due over six seconds, while the workers die and come back
        for round_ in range(8):
            await anyio.sleep(0.8)
            doomed = workers.pop(round_ % len(workers))
            doomed.signal(signal.SIGKILL)  # no goodbye: its takes and leases are cut anywhere
            killed.add(doomed.pid)
            workers.append(await anyio.to_thread.run_sync(start_worker, 2))
        with anyio.fail_after(PATIENCE * 2):
            for task in tasks:
                while not (await hub.get(task.id, owner=task.owner)).finished:
                    await anyio.sleep(0.2)
        for task in tasks:
            final = await hub.get(task.id, owner=task.owner)
            runs = _sql(f'SELECT attempt, pid FROM "{schema}".test_runs WHERE task_id = %s', task.id)
            assert final.status == "completed", (task.id, final.status, final.error)
            attempts = [attempt for attempt, _ in runs]
            assert len(set(attempts)) == len(attempts), f"an attempt of {task.id} ran twice: {runs}"
            # promoted and run once: any other run was cut short by the kill of its worker
            ended = [(attempt, pid) for attempt, pid in runs if attempt == final.attempt]
            assert ended == [(final.attempt, final.result["pid"])], runs
            others = {pid for attempt, pid in runs if attempt != final.attempt}
            assert others <= killed, f"{task.id} ran again while its first worker lived: {runs}"
        statistics = await hub.queue.statistics()
        assert (statistics.queued, statistics.running, statistics.scheduled) == (0, 0, 0)
    assert len(killed) == 8


async def test_status_counts_queued_running_scheduled_dead_and_live_workers(schema: str, start_worker: Any) -> None:
    first = start_worker(concurrency=1, grace=0.5)
    start_worker(concurrency=1)

    async def status() -> str:
        answer = await anyio.to_thread.run_sync(
            functools.partial(_cli, schema, "status", "tests.worker_app:hub", url=database_url())
        )
        assert answer.returncode == 0, answer.stderr
        return answer.stdout.strip()

    async with _client_hub(schema) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        failed = await hub.submit("boom", owner="alice")
        await sink.wait_for(lambda events: failed.id in _terminal(events), PATIENCE)
        long = {"steps": 600, "delay": 0.1}  # a minute: running until cancelled
        running = [await hub.submit("steps", owner=owner, payload=long) for owner in ("alice", "bob")]
        with anyio.fail_after(PATIENCE):
            while [(await hub.get(t.id, owner=t.owner)).status for t in running] != ["running", "running"]:
                await anyio.sleep(0.05)
        waiting = await hub.submit("steps", owner="carol", payload=long)  # both workers' one slot is taken
        later = await hub.submit("steps", owner="carol", payload=long, delay=3600)
        assert await status() == "queued 2  running 2  scheduled 1  dead 1  workers 2"
        first.signal(signal.SIGTERM)  # a graceful exit leaves the live workers at once
        with anyio.fail_after(PATIENCE):
            while (line := await status()).split("workers ")[1] != "1":
                await anyio.sleep(0.2)
        assert "dead 1" in line
        for task in (*running, waiting, later):
            await hub.cancel(task.id, owner=task.owner)


async def test_sigterm_hands_unfinished_tasks_back(schema: str, start_worker: Any) -> None:
    leaving = start_worker(concurrency=2, grace=0.3)
    async with _client_hub(schema) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        task = await hub.submit("steps", owner="alice", payload={"steps": 100, "delay": 0.1})
        await _wait_event(sink, lambda e: _view(e)["status"] == "running")
        leaving.signal(signal.SIGTERM)
        with anyio.fail_after(PATIENCE):
            while leaving.process.poll() is None:
                await anyio.sleep(0.05)
        assert leaving.process.returncode == 0
        record = await hub.get(task.id, owner="alice")
        assert (record.status, record.message) == ("queued", "interrupted; queued again")
        successor = start_worker(concurrency=1)
        await sink.wait_for(lambda events: task.id in _terminal(events), 60)
        final = _terminal(sink.events)[task.id]
        assert (final["status"], final["attempt"], final["result"]["pid"]) == ("completed", 2, successor.pid)
        check_task_events(sink.events)


def _sql(statement: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(database_url(), autocommit=True) as conn:
        cursor = conn.execute(statement, args or None)
        return cursor.fetchall() if cursor.description else []
