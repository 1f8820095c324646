"""Where an event's time goes on the Redis path: timestamps per stage, printed each second.

Installed by ``servers.py`` when ``BENCH_STAGES=1`` (never otherwise: it wraps library
methods, which costs CPU). Each report carries its send time in its message, so every stage
is measured from the report: the batch leaving (``GroupCommit`` queue), the script's answer,
the pub/sub reader handing the message to its identity, and the delivery (the inline send
done). Beside them: the batches' sizes and round trips, the replies per pub/sub read, the
event loop's lag (a 5 ms sleep's overshoot) and the cycle collector's passes per generation
(wall time and CPU). Printed to stderr as p50 / p99 / max. ``BENCH_CENSUS_AT=S`` (default 25):
S seconds after the start, and every 10 s after, a census of the process's tracked objects
(by type, the coroutines by function), to tell what a full collection has to scan.
``BENCH_STAGES=nogc`` turns the collector off, to see how the server does without it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from typing import Any

_MARK = b'"message":"'


class _Stats:
    def __init__(self) -> None:
        self.series: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        self.series.setdefault(name, []).append(value)

    def take(self) -> dict[str, list[float]]:
        series, self.series = self.series, {}
        return series


STATS = _Stats()


def _sent_at(data: bytes) -> float | None:
    at = data.find(_MARK)
    if at < 0:
        return None
    start = at + len(_MARK)
    try:
        return float(data[start : start + 17])
    except ValueError:
        return None


def _show(values: list[float]) -> str:
    values = sorted(values)
    n = len(values)
    return f"n={n:5d} p50={values[n // 2]:7.2f} p99={values[min(n - 1, n * 99 // 100)]:7.2f} max={values[-1]:7.2f}"


def _census() -> str:
    """The tracked objects by type, and the collector's counts so far (once, at steady load)."""
    from collections import Counter

    objects = gc.get_objects()
    kinds = Counter(type(o).__qualname__ for o in objects)
    top = ", ".join(f"{name} {n}" for name, n in kinds.most_common(25))
    coroutines = Counter(
        f"{o.cr_code.co_filename.rsplit('/', 2)[-2:]}:{o.cr_code.co_qualname}"
        for o in objects
        if type(o).__name__ == "coroutine"
    )
    by_name = ", ".join(f"{name} {n}" for name, n in coroutines.most_common(40))
    lists = Counter(len(o) for o in objects if type(o) is list)
    errors = Counter(f"{type(o).__qualname__}: {str(o)[:60]}" for o in objects if isinstance(o, BaseException))
    frames = Counter(
        f"{o.f_code.co_filename.rsplit('/', 2)[-2:]}:{o.f_code.co_qualname}:{o.f_lineno}"
        for o in objects
        if type(o).__name__ == "frame"
    )
    return (
        f"[census] {len(objects)} tracked objects: {top}\n[census] gc stats {gc.get_stats()}\n"
        f"[census] coroutines: {by_name}\n[census] list lengths {lists.most_common(8)}\n"
        f"[census] exceptions {errors.most_common(10)}\n[census] frames {frames.most_common(12)}"
    )


def _printer() -> None:
    began = time.monotonic()
    counted = 0
    while True:
        time.sleep(1.0)
        if time.monotonic() - began > float(os.environ.get("BENCH_CENSUS_AT", "25")) + 10 * counted:
            counted += 1
            print(_census(), file=sys.stderr, flush=True)
        series = STATS.take()
        if not series:
            continue
        lines = [f"[stages {time.strftime('%H:%M:%S')}]"]
        for name in sorted(series):
            lines.append(f"  {name:28} {_show(series[name])}")
        print("\n".join(lines), file=sys.stderr, flush=True)


async def _lag() -> None:
    while True:
        before, cpu_before = time.perf_counter(), time.thread_time()
        await asyncio.sleep(0.005)
        lag = time.perf_counter() - before - 0.005
        STATS.add("loop lag ms", lag * 1000)
        if lag > 0.05:  # a long one: busy (CPU spent meanwhile), or not given a core (none)
            STATS.add("long lag, share on CPU", (time.thread_time() - cpu_before) / (lag + 0.005))


def install() -> None:
    from progressq.backends import _group_commit
    from progressq.backends.redis import _registry, _wire

    submitted: dict[int, float] = {}
    lag_started = False

    original_submit = _group_commit.GroupCommit.submit

    def submit(self: Any, item: Any) -> asyncio.Future[Any]:
        nonlocal lag_started
        if not lag_started:
            lag_started = True
            asyncio.get_running_loop().create_task(_lag())
        future = original_submit(self, item)
        submitted[id(future)] = time.perf_counter()
        return future

    original_flush = _group_commit.GroupCommit._flush

    async def flush(self: Any) -> None:
        now = time.perf_counter()
        pending = self._pending[: self._max_batch]
        for _, future in pending:
            at = submitted.pop(id(future), None)
            if at is not None:
                STATS.add("queued before batch ms", (now - at) * 1000)
        STATS.add("batch size", float(len(pending)))
        STATS.add("batches out at start", float(len(self._flushes)))
        await original_flush(self)
        STATS.add("batch round trip ms", (time.perf_counter() - now) * 1000)

    original_replies = _wire._Wire.replies

    async def replies(self: Any) -> list[Any]:
        got = await original_replies(self)
        STATS.add("replies per read", float(len(got)))
        return got

    original_received = _registry._Identity.received

    def received(self: Any, data: bytes) -> Any:
        at = _sent_at(data)
        if at is None:
            return original_received(self, data)
        STATS.add("report -> reader ms", (time.time() - at) * 1000)
        outcome = original_received(self, data)
        STATS.add("report -> delivered ms", (time.time() - at) * 1000)
        return outcome

    _group_commit.GroupCommit.submit = submit  # type: ignore[method-assign]
    _group_commit.GroupCommit._flush = flush  # type: ignore[method-assign]
    _wire._Wire.replies = replies  # type: ignore[method-assign]
    _registry._Identity.received = received  # type: ignore[method-assign]
    collecting: list[float] = []

    def collector(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting.append(time.perf_counter())
            collecting.append(time.thread_time())
        elif collecting:
            STATS.add(f"gc gen{info['generation']} CPU ms", (time.thread_time() - collecting.pop()) * 1000)
            STATS.add(f"gc gen{info['generation']} pause ms", (time.perf_counter() - collecting.pop()) * 1000)

    gc.callbacks.append(collector)
    if os.environ.get("BENCH_STAGES") == "nogc":  # how it goes without the cycle collector
        gc.disable()
    threading.Thread(target=_printer, daemon=True).start()
