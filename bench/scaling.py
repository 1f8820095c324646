"""Scenario: scaling, live clients at a steady pace (1,000, 5,000 and 10,000 clients).

Each client has one WebSocket and one task that reports once a second, the tasks' phases
spread evenly over the second (a steady load of N events a second, not a burst of N at
one instant). One server process (uvicorn, uvloop), the worker inside it; the clients in
several other processes (``_swarm.py``: raw frames on uvloop, only the send time read), so
that the clients' own work takes as little of the shared cores as it can, and their CPU is
reported beside the server's. Measured after a warm-up: the server's CPU per event, p50/p99
delivery latency (each report carries its send time) and delivered events per second, for
progressq on memory and on Redis and the hand-written port (``json.dumps`` +
``send_text``) in the same run. The open-file limit is raised to what the clients need.
progressq on Redis runs on a private ``redis-server`` on a free port (``--shared-redis``: the
shared one), so that no other load is in it and its CPU per event (``INFO cpu``) is this
scenario's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from _clients import start_load
from _common import (
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    cpu_seconds,
    fmt,
    median,
    parser,
    percentile,
    private_redis,
    raise_file_limit,
    redis_cpu,
    selected,
    server,
    table,
    write_results,
)
from _swarm import default_processes, swarm

SYSTEMS = ("port", "progressq", "progressq-redis")
LABELS = {"port": "hand-written port", "progressq": "progressq memory", "progressq-redis": "progressq Redis"}


LIVE_TIMEOUT = 60.0
"""Seconds every task may take to start (submitted at once, thousands take seconds)."""


@contextlib.contextmanager
def sampled(pid: int, name: str, seconds: float) -> Iterator[None]:
    """With ``SCALING_PROFILE=PREFIX``, py-spy (on the PATH) samples the server during the
    measured window without stopping it, into ``PREFIX.NAME.txt`` (collapsed stacks)."""
    prefix = os.environ.get("SCALING_PROFILE")
    if not prefix:
        yield
        return
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250"]
    command += ["--nonblocking", "--format", "raw", "-o", f"{prefix}.{name}.txt"]
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        sampler.wait(30)


def measure(
    system: str, port: int, pid: int, users: int, seconds: float, warmup: float, processes: int, redis_port: int | None
) -> dict[str, Any]:
    paths = [f"/ws?user=u{i}" for i in range(users)]
    greeting = 2 if system.startswith("progressq") else 0  # its connection and snapshot messages
    with swarm(port, paths, processes, greeting=greeting) as clients:
        if clients.opened != users:
            raise RuntimeError(f"{clients.opened} of {users} connections opened")
        # The window opens once every task runs (each client has had a progress event), so
        # that it measures the steady load, not the tasks starting; the tasks run long enough.
        began = time.monotonic()
        asyncio.run(start_load(port, users=users, seconds=LIVE_TIMEOUT + warmup + seconds + 1.0, rate=1))
        live = clients.wait_live(users, LIVE_TIMEOUT)
        all_live = time.monotonic() - began
        if live < users:
            print(f"  only {live} of {users} tasks started in {LIVE_TIMEOUT:g} s", flush=True)
        start = time.monotonic() + warmup
        end = start + seconds
        clients.open_window(start, end)
        time.sleep(max(0.0, start - time.monotonic()))
        redis0 = redis_cpu(redis_port) if redis_port else 0.0
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        with sampled(pid, f"{system}-{users}", seconds):
            time.sleep(max(0.0, end - time.monotonic()))
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        redis1 = redis_cpu(redis_port) if redis_port else 0.0
        measured = clients.collect()
    latencies = [s * 1000 for s in measured.latencies]
    delivered = measured.deliveries
    return {
        "clients": users,
        "all_live_s": all_live,
        "delivered_per_s": delivered / (end - start),
        "server_cpu_us_per_event": (cpu1 - cpu0) / delivered * 1e6 if delivered else float("nan"),
        "server_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "redis_cpu_us_per_event": (redis1 - redis0) / delivered * 1e6 if redis_port and delivered else float("nan"),
        "client_cpu_share": measured.client_cpu / (end - start),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "samples": len(latencies),
        "closed": measured.closed,
    }


def one_round(
    system: str, users: int, seconds: float, warmup: float, processes: int, redis_port: int
) -> dict[str, Any]:
    # progress_interval 0: every report is an event, as with the port. With the default, a
    # task that fell behind its pace (a busy machine) has its catch-up reports coalesced: fewer
    # events delivered for the same work, which read as a higher CPU cost per event.
    extra = ["--concurrency", str(users + 64), "--interval", "0"] if system.startswith("progressq") else []
    on_redis = system.endswith("-redis")
    if on_redis:
        extra += ["--redis-url", f"redis://{REDIS_HOST}:{redis_port}/{REDIS_DB}"]
    with server(system, *extra, ready_timeout=60) as (process, port):
        return measure(system, port, process.pid, users, seconds, warmup, processes, redis_port if on_redis else None)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--sizes", default="", help="comma-separated client counts (default 1000,5000,10000; quick 200)")
    p.add_argument("--processes", type=int, default=0, help="client processes (default: one per core, at least 2)")
    p.add_argument("--shared-redis", action="store_true", help="use the shared Redis, not a private redis-server")
    p.add_argument("--seconds", type=float, default=0.0, help="measured seconds per size (default 5, quick 1.5)")
    args = p.parse_args()
    rounds = args.rounds or 1
    sizes = [int(x) for x in (args.sizes or ("200" if args.quick else "1000,5000,10000")).split(",")]
    seconds = args.seconds or (1.5 if args.quick else 5.0)
    warmup = 1.5 if args.quick else 3.0
    processes = args.processes or default_processes()
    limit = raise_file_limit(max(sizes) + 1024)
    if limit < max(sizes) + 100:
        raise SystemExit(f"the open-file limit is {limit}: too low for {max(sizes)} clients")
    systems = selected(args.only, SYSTEMS)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s: {n: [] for n in sizes} for s in systems}
    shared = args.shared_redis or shutil.which("redis-server") is None
    with contextlib.ExitStack() as stack:
        redis_port = (
            REDIS_PORT
            if shared or not any(s.endswith("-redis") for s in systems)
            else stack.enter_context(private_redis())
        )
        play(runs, systems, sizes, rounds, seconds, warmup, processes, redis_port)
    report(runs, systems, sizes, rounds, seconds, shared)


def play(
    runs: dict[str, dict[int, list[dict[str, Any]]]],
    systems: list[str],
    sizes: list[int],
    rounds: int,
    seconds: float,
    warmup: float,
    processes: int,
    redis_port: int,
) -> None:
    for round_index in range(rounds):
        for users in sizes:
            for system in systems:
                outcome = one_round(system, users, seconds, warmup, processes, redis_port)
                in_redis = outcome["redis_cpu_us_per_event"]
                runs[system][users].append(outcome)
                print(
                    f"  round {round_index + 1}: {users:6} clients {system:16} "
                    f"{fmt(outcome['delivered_per_s'])} events/s delivered, "
                    f"server {fmt(outcome['server_cpu_us_per_event'])} us CPU each "
                    f"{'' if math.isnan(in_redis) else f'(+{fmt(in_redis)} in Redis) '}"
                    f"({outcome['server_cpu_share'] * 100:.0f}% of a core; clients "
                    f"{outcome['client_cpu_share'] * 100:.0f}%), "
                    f"p50 {fmt(outcome['p50_ms'], 2)} / p99 {fmt(outcome['p99_ms'], 2)} ms; "
                    f"all tasks live {outcome['all_live_s']:.1f} s after the start",
                    flush=True,
                )


def report(
    runs: dict[str, dict[int, list[dict[str, Any]]]],
    systems: list[str],
    sizes: list[int],
    rounds: int,
    seconds: float,
    shared: bool,
) -> None:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for users in sizes:
        for system in systems:
            done = runs[system][users]
            measures = ("server_cpu_us_per_event", "redis_cpu_us_per_event", "p50_ms", "p99_ms")
            row = {k: median([r.get(k, float("nan")) for r in done]) for k in measures}
            row["delivered_per_s"] = median([r["delivered_per_s"] for r in done])
            row["server_cpu_share"] = median([r["server_cpu_share"] for r in done])
            row["client_cpu_share"] = median([r["client_cpu_share"] for r in done])
            row["all_live_s"] = median([r["all_live_s"] for r in done])
            summary.setdefault(system, {})[str(users)] = row
            rows.append(
                [
                    f"{users:,}",
                    LABELS[system],
                    fmt(row["server_cpu_us_per_event"]),
                    "" if math.isnan(row["redis_cpu_us_per_event"]) else fmt(row["redis_cpu_us_per_event"]),
                    f"{fmt(row['p50_ms'], 2)} / {fmt(row['p99_ms'], 2)}",
                    f"{fmt(row['delivered_per_s'])} / ~{users:,}",
                    f"{row['server_cpu_share'] * 100:.0f}%",
                    f"{row['client_cpu_share'] * 100:.0f}%",
                    f"{row['all_live_s']:.1f}",
                ]
            )
    table(
        f"Scaling: each client one task reporting once a second, {seconds:g} s measured (median of {rounds})",
        [
            "clients",
            "system",
            "server CPU us/event",
            "+ in Redis us/event",
            "p50 / p99 ms",
            "delivered / offered events/s",
            "server CPU",
            "clients' CPU",
            "all live after s",
        ],
        rows,
    )
    write_results(
        "scaling",
        {
            "sizes": sizes,
            "seconds": seconds,
            "rounds": rounds,
            "labels": LABELS,
            "private_redis": not shared,
            "runs": runs,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
