"""Worker processes (``progressq worker``) on one Redis: crashes, stalls and shutdowns.

Each test starts real ``progressq worker tests.worker_app:hub`` processes under its own key
prefix and submits tasks from this process, watching them as their owners' clients would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from progressq import Hub
from progressq.contracts import Event
from progressq.testing import RecordingSink, check_task_events
from tests.redis_support import REDIS_URL, prefixed
from tests.waiting import PATIENCE
from tests.worker_app import make_hub, runs_key

pytestmark = [pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent
LEASE_TIMEOUT = 1.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "progressq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "progressq"]


class Worker:
    """One ``progressq worker`` process on ``url`` (Redis, or PostgreSQL with ``prefix`` as its
    schema); its log goes to a file."""

    def __init__(
        self,
        prefix: str,
        log: Path,
        *,
        concurrency: int,
        grace: float,
        forget: float = 600.0,
        every: str = "",
        url: str = REDIS_URL,
    ) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PQ_TEST_REDIS_URL": url,
            "PQ_TEST_PREFIX": prefix,
            "PQ_TEST_LEASE_TIMEOUT": str(LEASE_TIMEOUT),
            "PQ_TEST_GRACE": str(grace),
            "PQ_TEST_FORGET_CONSUMERS": str(forget),
            "PQ_TEST_EVERY": every,
        }
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*_console_script(), "worker", "tests.worker_app:hub", "--concurrency", str(concurrency)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PATIENCE
        while "progressq worker tests.worker_app:hub: pid" not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.text()}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with prefixed("workers") as prefix:
        yield prefix


@pytest.fixture
def start_worker(redis_prefix: str, tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def start(concurrency: int = 3, grace: float = 5.0, forget: float = 600.0, every: str = "") -> Worker:
        log = tmp_path / f"worker-{len(workers)}.log"
        worker = Worker(redis_prefix, log, concurrency=concurrency, grace=grace, forget=forget, every=every)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


def _client_hub(prefix: str) -> Hub:
    return make_hub(REDIS_URL, prefix, lease_timeout=LEASE_TIMEOUT, concurrency=0)


def _view(event: Event) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.json.decode(event.task_json)
    return view


def _pid_in(event: Event) -> int | None:
    message = str(_view(event)["message"])
    return int(message.rsplit(" ", 1)[1]) if " pid " in message else None


def _terminal(events: list[Event]) -> dict[str, dict[str, Any]]:
    return {e.task_id: _view(e) for e in events if _view(e)["status"] in ("completed", "failed", "cancelled")}


async def _wait_event(sink: RecordingSink, predicate: Any, within: float = PATIENCE) -> Event:
    await sink.wait_for(lambda events: any(predicate(e) for e in events), within)
    return next(e for e in sink.events if predicate(e))


async def test_kill_9_of_a_worker_loses_no_task(redis_prefix: str, start_worker: Any) -> None:
    doomed = start_worker(concurrency=3)
    survivor = start_worker(concurrency=3)
    async with _client_hub(redis_prefix) as hub:
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


async def test_delayed_tasks_run_once_while_workers_are_killed_9_and_restarted(
    redis_prefix: str, start_worker: Any
) -> None:
    workers = [start_worker(concurrency=2) for _ in range(3)]
    killed: set[int] = set()
    async with _client_hub(redis_prefix) as hub:
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
        client = hub.backend.client  # type: ignore[attr-defined]
        for task in tasks:
            final = await hub.get(task.id, owner=task.owner)
            runs = [run.decode().split(":") for run in await client.lrange(runs_key(redis_prefix, task.id), 0, -1)]
            assert final.status == "completed", (task.id, final.status, final.error)
            attempts = [int(attempt) for attempt, _ in runs]
            assert len(set(attempts)) == len(attempts), f"an attempt of {task.id} ran twice: {runs}"
            # promoted and run once: any other run was cut short by the kill of its worker
            ended = [(attempt, pid) for attempt, pid in runs if int(attempt) == final.attempt]
            assert ended == [(str(final.attempt), str(final.result["pid"]))], runs
            others = {int(pid) for attempt, pid in runs if int(attempt) != final.attempt}
            assert others <= killed, f"{task.id} ran again while its first worker lived: {runs}"
        statistics = await hub.queue.statistics()
        assert (statistics.queued, statistics.running, statistics.scheduled) == (0, 0, 0)
    assert len(killed) == 8


async def _any_sink_event(sinks: dict[str, RecordingSink], predicate: Any, within: float = PATIENCE) -> Event:
    with anyio.fail_after(within):
        while True:
            for sink in sinks.values():
                for event in sink.events:
                    if predicate(event):
                        return event
            await anyio.sleep(0.02)


async def test_a_paused_worker_whose_lease_was_taken_reaches_no_client(redis_prefix: str, start_worker: Any) -> None:
    # Both workers are up before the task is queued (one that starts only now may take longer
    # on a busy machine than the task does); whichever takes it is paused, the other takes over.
    workers = [start_worker(concurrency=1), start_worker(concurrency=1)]
    async with _client_hub(redis_prefix) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        task = await hub.submit("steps", owner="alice", payload={"steps": 50, "delay": 0.08})
        running = await _wait_event(sink, lambda e: _pid_in(e) is not None and _view(e)["progress"] >= 10)
        paused, taker = workers if _pid_in(running) == workers[0].pid else workers[::-1]
        paused.signal(signal.SIGSTOP)
        takeover = await _wait_event(sink, lambda e: _view(e)["attempt"] == 2 and _view(e)["status"] == "running")
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


async def test_sigterm_lets_running_tasks_finish_within_the_grace(redis_prefix: str, start_worker: Any) -> None:
    worker = start_worker(concurrency=2, grace=20.0)
    async with _client_hub(redis_prefix) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        task = await hub.submit("steps", owner="alice", payload={"steps": 15, "delay": 0.1})
        await _wait_event(sink, lambda e: _view(e)["status"] == "running")
        worker.signal(signal.SIGTERM)
        with anyio.fail_after(PATIENCE):
            while worker.process.poll() is None:
                await anyio.sleep(0.05)
        assert worker.process.returncode == 0
        record = await hub.get(task.id, owner="alice")
        assert (record.status, record.attempt) == ("completed", 1)
        assert "taking no new task" in worker.text()


async def test_sigterm_hands_unfinished_tasks_back(redis_prefix: str, start_worker: Any) -> None:
    leaving = start_worker(concurrency=2, grace=0.3)
    async with _client_hub(redis_prefix) as hub:
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


async def test_a_worker_that_lost_its_lease_stops_the_handler(redis_prefix: str, start_worker: Any) -> None:
    paused = start_worker(concurrency=1)
    async with _client_hub(redis_prefix) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        # long enough (30 s) that its natural end comes far after the takeover
        task = await hub.submit("steps", owner="alice", payload={"steps": 300, "delay": 0.1})
        await _wait_event(sink, lambda e: _pid_in(e) == paused.pid and _view(e)["progress"] >= 2)
        taker = start_worker(concurrency=1)
        paused.signal(signal.SIGSTOP)
        await _wait_event(sink, lambda e: _view(e)["attempt"] == 2 and _pid_in(e) == taker.pid)
        paused.signal(signal.SIGCONT)
        # the resumed worker learns of the loss (heartbeat or a refused write) and stops the
        # handler (the line is logged once its handler has returned), while the taker still
        # runs the task: long before the handler's natural end
        with anyio.fail_after(PATIENCE):
            while "its handler was stopped" not in paused.text():
                await anyio.sleep(0.1)
        record = await hub.get(task.id, owner="alice")
        assert (record.status, record.attempt) == ("running", 2)
        assert f"task {task.id}: lease of attempt 1 lost" in paused.text()
        assert all(_pid_in(e) in (None, taker.pid) for e in sink.events if _view(e)["attempt"] == 2)
        await hub.cancel(task.id, owner="alice")
        await sink.wait_for(lambda events: task.id in _terminal(events), 60)


async def _consumers(hub: Hub) -> list[str]:
    client: Any = hub.backend.client  # type: ignore[attr-defined]
    stream = f"{hub.backend.prefix}:queue"  # type: ignore[attr-defined]
    if not await client.exists(stream):
        return []
    return sorted(c["name"].decode() for c in await client.xinfo_consumers(stream, "workers"))


async def test_workers_leave_the_group_and_dead_ones_are_removed(redis_prefix: str, start_worker: Any) -> None:
    async with _client_hub(redis_prefix) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        for _ in range(4):  # start, work, stop gracefully: the worker removes its own consumer
            worker = start_worker(concurrency=1, forget=3.0)
            task = await hub.submit("steps", owner="alice", payload={"steps": 2, "delay": 0.01})
            await sink.wait_for(lambda events: task.id in _terminal(events), 60)  # noqa: B023
            assert len(await _consumers(hub)) == 1
            worker.signal(signal.SIGTERM)
            worker.process.wait(30)
            assert await _consumers(hub) == []
        survivor = start_worker(concurrency=1, forget=3.0)
        doomed = [start_worker(concurrency=1, forget=3.0) for _ in range(3)]
        # a consumer is made by its first delivery: keep all four busy, then kill three
        owners = [f"owner-{n}" for n in range(8)]  # one task each: no owner's cap in the way
        busy = [await hub.submit("steps", owner=owner, payload={"steps": 40, "delay": 0.1}) for owner in owners]
        with anyio.fail_after(PATIENCE):
            while len(await _consumers(hub)) != 4:
                await anyio.sleep(0.05)
        for worker in doomed:  # killed outright: their consumers stay until a live worker prunes them
            worker.signal(signal.SIGKILL)
        # the survivor takes their tasks over (then the dead consumers hold nothing) ...
        with anyio.fail_after(90):
            while [(await hub.get(t.id, owner=t.owner)).status for t in busy] != ["completed"] * len(busy):
                await anyio.sleep(0.2)
        # ... and removes them once idle past the bound: the one left is the survivor's
        with anyio.fail_after(60):
            while len(await _consumers(hub)) != 1:
                await anyio.sleep(0.2)
        task = await hub.submit("steps", owner="alice", payload={"steps": 2, "delay": 0.01})
        await sink.wait_for(lambda events: task.id in _terminal(events), 60)
        assert _terminal(sink.events)[task.id]["result"]["pid"] == survivor.pid


async def test_two_workers_share_out_fairly_and_hold_the_cap_together(redis_prefix: str, start_worker: Any) -> None:
    # 2 workers x 4 slots; each lets an owner run 2 at once (half its slots), across both
    start_worker(concurrency=4)
    start_worker(concurrency=4)
    async with _client_hub(redis_prefix) as hub:
        sink = RecordingSink()
        await hub.registry.attach("newcomer", sink)
        backlog = [await hub.submit("steps", owner="hog", payload={"steps": 30, "delay": 0.1}) for _ in range(20)]

        async def hog_statuses() -> list[str]:
            return [(await hub.get(t.id, owner="hog")).status for t in backlog]

        with anyio.fail_after(PATIENCE):
            while (await hog_statuses()).count("running") < 2:
                await anyio.sleep(0.05)
        quick = await hub.submit("steps", owner="newcomer", payload={"steps": 2, "delay": 0.05})
        peak = 0
        with anyio.fail_after(60):
            while quick.id not in _terminal(sink.events):
                peak = max(peak, (await hog_statuses()).count("running"))
                await anyio.sleep(0.05)
        # it did not wait behind the backlog: most of the hog's tasks had not started yet
        assert (await hog_statuses()).count("queued") >= 10
        assert _terminal(sink.events)[quick.id]["status"] == "completed"
        assert peak <= 2
        for task in backlog:
            await hub.cancel(task.id, owner="hog")


def _cli(redis_prefix: str, *args: str, url: str = REDIS_URL) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PQ_TEST_REDIS_URL": url, "PQ_TEST_PREFIX": redis_prefix}
    return subprocess.run(
        [*_console_script(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_operator_lists_retries_and_purges_failed_tasks(redis_prefix: str, start_worker: Any) -> None:
    start_worker(concurrency=2)
    async with _client_hub(redis_prefix) as hub:
        sink = RecordingSink()
        await hub.registry.attach("alice", sink)
        failed = [(await hub.submit("boom", owner="alice", payload={"n": n})).id for n in range(2)]
        await sink.wait_for(lambda events: set(_terminal(events)) >= set(failed), 60)
        status = await anyio.to_thread.run_sync(_cli, redis_prefix, "status", "tests.worker_app:hub")
        assert status.returncode == 0, status.stderr
        assert status.stdout.strip() == "queued 0  running 0  scheduled 0  dead 2  workers 1"
        listed = await anyio.to_thread.run_sync(_cli, redis_prefix, "dead", "list", "tests.worker_app:hub")
        assert {line.split()[0] for line in listed.stdout.splitlines()} == set(failed)
        assert "RuntimeError: boom 1" in listed.stdout
        retried = await anyio.to_thread.run_sync(
            _cli, redis_prefix, "dead", "retry", "tests.worker_app:hub", failed[0], "no-such-task"
        )
        assert retried.returncode == 1  # one id was not a failed task
        assert "no-such-task: no such failed task" in retried.stderr
        again = retried.stdout.split("submitted again as ")[1].split()[0]
        await sink.wait_for(lambda events: again in _terminal(events), 60)  # its owner saw it run
        assert _terminal(sink.events)[again]["error"] == "RuntimeError: boom 0"
        purged = await anyio.to_thread.run_sync(_cli, redis_prefix, "dead", "purge", "tests.worker_app:hub")
        assert purged.stdout.strip() == "purged 2"  # the second and the retried one
        assert await hub.dead_letters() == []


async def test_status_counts_queued_running_scheduled_dead_and_live_workers(
    redis_prefix: str, start_worker: Any
) -> None:
    first = start_worker(concurrency=1, grace=0.5)
    start_worker(concurrency=1)

    async def status() -> str:
        answer = await anyio.to_thread.run_sync(_cli, redis_prefix, "status", "tests.worker_app:hub")
        assert answer.returncode == 0, answer.stderr
        return answer.stdout.strip()

    async with _client_hub(redis_prefix) as hub:
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


async def test_three_worker_processes_fire_each_periodic_slot_once(redis_prefix: str, start_worker: Any) -> None:
    for _ in range(3):
        start_worker(concurrency=2, every="0.5")
    async with _client_hub(redis_prefix) as hub:
        with anyio.fail_after(60):
            while len(await hub.list(owner="clock")) < 6:
                await anyio.sleep(0.1)
        fired = await hub.list(owner="clock")
    slots = [int(r.created_at.timestamp() // 0.5) for r in fired]
    assert len(set(slots)) == len(slots), sorted(slots)  # no slot fired twice
