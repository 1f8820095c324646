"""What every system of the queue scenario shares: the task, its tally, the enqueue lanes.

Every task carries its index; the handler ticks it in the tally, which fires ``done`` when
every index has run and counts the runs beyond each task's first. A task that never runs fails
the round (it times out); one that runs twice is counted and reported beside the rate, since
an at-least-once queue may do that and still be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

IN_FLIGHT = 64


class Tally:
    """Which tasks' handlers ran; ``done`` fires when each of ``target`` tasks has run."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.runs = bytearray(target)  # handler runs per task index (stops counting at 255)
        self.count = 0  # distinct tasks run
        self.repeats = 0  # runs beyond each task's first
        self.done = asyncio.Event()
        self.last = 0.0
        self.cpu_start = self.cpu_last = 0.0  # this process's CPU time (worker and enqueuer)

    def tick(self, index: int) -> None:
        if self.runs[index]:
            self.repeats += 1
        else:
            self.count += 1
        self.runs[index] = min(255, self.runs[index] + 1)
        if self.count == self.target and not self.done.is_set():
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            self.done.set()

    def check(self) -> None:
        """Every task ran, or the round is refused."""
        if self.count != self.target:
            raise AssertionError(f"{self.count} of {self.target} tasks ran")


TALLY = Tally(0)
SLEEP = 0.0


def reset(n: int, sleep: float) -> None:
    global TALLY, SLEEP
    TALLY, SLEEP = Tally(n), sleep


def begin() -> float:
    """The measurement starts now: its wall-clock time (and this process's CPU time, kept)."""
    TALLY.cpu_start = time.process_time()
    return time.perf_counter()


async def work(index: int) -> None:
    """The task every system runs: an optional sleep, then the tick."""
    if SLEEP:
        await asyncio.sleep(SLEEP)
    TALLY.tick(index)


async def enqueue_all(n: int, enqueue: Callable[[int], Awaitable[Any]]) -> float:
    """Enqueue ``n`` tasks, ``IN_FLIGHT`` at a time; the seconds it took."""
    start = time.perf_counter()
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            index = next_index
            next_index += 1
            await enqueue(index)

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - start


async def quietly(*steps: Awaitable[Any]) -> None:
    """Tear down after the measurement: a peer's shutdown noise must not lose the result."""
    for step in steps:
        with contextlib.suppress(BaseException):
            await step


async def finish(start: float, enqueue_s: float, limit_s: float) -> dict[str, float]:
    """Wait for the last task; the round's timings, and how many runs were repeats."""
    await asyncio.wait_for(TALLY.done.wait(), limit_s)
    TALLY.check()
    total = TALLY.last - start
    cpu_us = (TALLY.cpu_last - TALLY.cpu_start) / TALLY.target * 1e6
    return {
        "enqueue_s": enqueue_s,
        "total_s": total,
        "tasks_per_s": TALLY.target / total,
        "cpu_us_per_task": cpu_us,
        "repeats": TALLY.repeats,
    }


async def await_statuses(url: str, query: str, expected: dict[str, int], limit_s: float = 60.0) -> None:
    """The system's own record agrees: poll ``query`` (status, count rows) until it gives
    ``expected``. The last handler has returned by now, but its task's row may be written
    a moment later."""
    import psycopg

    deadline = time.monotonic() + limit_s
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            rows = await (await conn.execute(query)).fetchall()
            found = {str(status): int(count) for status, count in rows}
            if found == expected:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the tasks' rows say {found}, expected {expected}")
            await asyncio.sleep(0.2)
