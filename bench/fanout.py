"""Scenario 2: progress fan-out, deliveries per second at many WebSocket clients.

Each user has one connection and one producer that sends progress as fast as it can
(progressq: a task calling ``ctx.report()`` in a loop, ``progress_interval=0`` so no report is
coalesced away at the source; the peers: a coroutine publishing to the user's room or channel;
raw ASGI: pre-encoded bytes sent straight to the socket). progressq runs on each backend:
memory, Redis (the shared server, database 14 emptied after each round) and PostgreSQL (a
database of its own, created afresh for each round and dropped at the end) and a local Redis
Cluster (three masters, no replicas, started by the scenario on the same machine, emptied after
each round, stopped at the end; skipped when redis-server or redis-cli is missing); the peers
keep their rooms and channels in memory. The server runs in its own process (uvicorn, one worker,
compression off), the clients in this one. Counted: progress messages received by all clients
per second, after a warm-up (each client checks that every one is of its own task, with seq
without a gap; the raw app, which sends one pre-encoded frame to all, is not checked); the
server's CPU time per delivery, and on PostgreSQL the database's too (its server processes
serving the benchmark's database), on the cluster its masters' (the shared Redis's is not
counted: other clients' load would be in it).

With ``--callgrind`` each selected system's server runs under valgrind's callgrind instead,
instrumented only during the measured window (``callgrind_control``), and the scenario prints
its instructions per delivery: a count that a busy machine does not move, to judge one change
at a time (default 200 clients, 20 s; the server runs some 30-50 times slower).

    bench/.venv/bin/python bench/fanout.py --callgrind --only progressq-memory,litestar,raw
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _clients import reading_clients, start_load
from _cluster import ClusterUnavailable, LocalCluster, local_cluster, missing_tools
from _common import (
    POSTGRES_DB,
    POSTGRES_SERVER,
    cpu_seconds,
    drop_postgres_db,
    flush_bench_db,
    fmt,
    fresh_postgres_db,
    median,
    parser,
    raise_file_limit,
    selected,
    server,
    spread,
    table,
    write_results,
)

# Each system and where it keeps what it delivers; the table lists them in this order.
BACKEND = {
    "progressq-memory": "memory",
    "progressq-redis": "redis",
    "progressq-redis-cluster": "redis-cluster",
    "progressq-postgres": "postgres",
    "socketio": "memory",
    "litestar": "memory",
    "raw": "-",
}
SYSTEMS = tuple(BACKEND)
PEERS = ("socketio", "litestar")
WARMUP = 1.0  # seconds before measuring (0.5 with --quick)
# The local cluster of this run, while a system on it is selected.
CLUSTER: LocalCluster | None = None


def database_cpu(system: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL server process serving the benchmark's database,
    or of each master of the local cluster (none for the other systems)."""
    if BACKEND[system] == "redis-cluster" and CLUSTER is not None:
        return {process.pid: cpu_seconds(process.pid) for process in CLUSTER.processes.values()}
    if BACKEND[system] != "postgres":
        return {}
    import psycopg

    with psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (POSTGRES_DB,)).fetchall()
    seconds = {}
    for (pid,) in rows:
        with contextlib.suppress(OSError):  # it ended meanwhile
            seconds[int(pid)] = cpu_seconds(int(pid))
    return seconds


def _no_hook() -> None:
    pass


async def measure(
    system: str,
    port: int,
    pid: int,
    users: int,
    seconds: float,
    *,
    window_opens: Callable[[], None] = _no_hook,
    window_closes: Callable[[], None] = _no_hook,
    linger: float = 0.0,
) -> dict[str, float]:
    async with reading_clients(system, port, [f"u{i}" for i in range(users)]) as tally:
        tally.checking = system != "raw"  # the raw app sends one pre-encoded frame to everyone
        await start_load(port, users=users, seconds=seconds + WARMUP + 0.5 + linger, rate=0)
        await asyncio.sleep(WARMUP)
        window_opens()
        count0, cpu0, db0, t0 = tally.deliveries, cpu_seconds(pid), database_cpu(system), time.perf_counter()
        await asyncio.sleep(seconds)
        count1, cpu1, db1, t1 = tally.deliveries, cpu_seconds(pid), database_cpu(system), time.perf_counter()
        window_closes()
        await asyncio.sleep(0.5)  # the producers end: closing 200+ sockets under a flood is slow
    delivered = count1 - count0
    # The database's processes alive at both readings (the pool keeps its connections open).
    db_cpu = sum(db1[p] - db0[p] for p in db1 if p in db0) if db0 else float("nan")
    return {
        "deliveries_per_s": delivered / (t1 - t0),
        "server_cpu_us_per_delivery": (cpu1 - cpu0) / delivered * 1e6 if delivered else float("nan"),
        "server_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "database_cpu_us_per_delivery": db_cpu / delivered * 1e6 if delivered else float("nan"),
        "clients": users,
        "closed": tally.closed,
        "wrong": tally.wrong,
    }


def one_round(system: str, users: int, seconds: float) -> dict[str, float]:
    progressq = system.startswith("progressq")
    app = "progressq" if system == "progressq-memory" else system
    extra = ["--interval", "0"] if progressq else []
    if BACKEND[system] == "redis-cluster" and CLUSTER is not None:
        extra += ["--cluster-url", CLUSTER.url]
    if BACKEND[system] == "postgres":
        fresh_postgres_db()
    try:
        with server(app, *extra) as (process, port):
            return asyncio.run(measure(system, port, process.pid, users, seconds))
    finally:
        if BACKEND[system] == "redis":
            flush_bench_db()
        if BACKEND[system] == "redis-cluster" and CLUSTER is not None:
            CLUSTER.flush()


def server_under_callgrind(
    app: str, out: str
) -> contextlib.AbstractContextManager[tuple[subprocess.Popen[bytes], int]]:
    """``bench/servers.py APP`` under callgrind, not instrumented until told (``callgrind_control``)."""
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    extra = ["--interval", "0"] if app.startswith("progressq") else []
    return server(app, *extra, ready_timeout=600, under=valgrind, stop_timeout=60)


def count_instructions(systems: list[str], users: int, seconds: float) -> None:
    """Instructions per delivery of each system's server, counted in the measured window only."""
    global WARMUP
    WARMUP = 3.0  # the server is far slower under valgrind: let every producer get going
    per_delivery: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for system in systems:
            if BACKEND[system] != "memory" and system != "raw":
                print(f"  {system}: skipped (--callgrind counts the in-memory systems only)", flush=True)
                continue
            app = "progressq" if system == "progressq-memory" else system
            out = os.path.join(folder, f"{system}.out")
            with server_under_callgrind(app, out) as (process, port):

                def control(*args: str, pid: int = process.pid) -> None:
                    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)

                outcome = asyncio.run(
                    measure(
                        system,
                        port,
                        process.pid,
                        users,
                        seconds,
                        window_opens=lambda: control("--instr=on"),
                        window_closes=lambda: (control("--dump"), control("--instr=off"))[0],
                        linger=60.0,  # the producers outlast the window, however slowly it closes
                    )
                )
            dumps = sorted(name for name in os.listdir(folder) if name.startswith(f"{system}.out."))
            with open(os.path.join(folder, dumps[0])) as file:
                total = re.search(r"^(?:summary|totals): (\d+)", file.read(), re.MULTILINE)
            assert total is not None, f"no instruction total for {system}"
            delivered = outcome["deliveries_per_s"] * seconds
            per_delivery[system] = int(total.group(1)) / delivered
            print(f"  {system:18} {per_delivery[system]:,.0f} instructions per delivery ({delivered:,.0f})", flush=True)
    litestar = per_delivery.get("litestar", float("nan"))
    rows = [[s, f"{n:,.0f}", fmt(n / litestar, 2)] for s, n in per_delivery.items()]
    table(
        f"Progress fan-out under callgrind: {users} clients, {seconds:g} s window",
        ["system", "instructions / delivery", "/ Litestar channels"],
        rows,
    )
    write_results(
        "fanout_instructions", {"users": users, "seconds": seconds, "instructions_per_delivery": per_delivery}
    )


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--users", type=int, default=0, help="connections (default 1000, quick 200)")
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--callgrind", action="store_true", help="instructions per delivery under valgrind (see above)")
    args = p.parse_args()
    if args.callgrind:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            raise SystemExit("--callgrind needs valgrind and callgrind_control")
        raise_file_limit()
        count_instructions(selected(args.only, SYSTEMS), args.users or 200, args.seconds or 20.0)
        return
    if args.quick:
        global WARMUP
        WARMUP = 0.5
    raise_file_limit()
    rounds = args.rounds or (1 if args.quick else 3)
    users = args.users or (200 if args.quick else 1000)
    seconds = args.seconds or (1.5 if args.quick else 4.0)
    systems = selected(args.only, SYSTEMS)
    global CLUSTER
    stack = contextlib.ExitStack()
    if "progressq-redis-cluster" in systems:
        reason = missing_tools()
        try:
            CLUSTER = None if reason else stack.enter_context(local_cluster())
        except ClusterUnavailable as exc:
            reason = str(exc)
        if reason:
            print(f"  progressq-redis-cluster: skipped, {reason}", flush=True)
            systems.remove("progressq-redis-cluster")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    try:
        for round_index in range(rounds):
            for system in systems:
                outcome = one_round(system, users, seconds)
                runs[system].append(outcome)
                database = outcome["database_cpu_us_per_delivery"]
                print(
                    f"  round {round_index + 1}: {system:18} {fmt(outcome['deliveries_per_s'])} deliveries/s, "
                    f"server {fmt(outcome['server_cpu_us_per_delivery'])} us CPU each "
                    f"({outcome['server_cpu_share'] * 100:.0f}% of a core)"
                    + (f", database {fmt(database)} us" if database == database else "")
                    + f", {outcome['closed']} closed, {outcome['wrong']} wrong",
                    flush=True,
                )
    finally:
        stack.close()
        if any(BACKEND[s] == "postgres" for s in systems):
            drop_postgres_db()
    wrong = {s: sum(r["wrong"] for r in runs[s]) for s in systems if any(r["wrong"] for r in runs[s])}
    if wrong:  # a delivery of another client's task, or a gap in seq: the rates mean nothing
        print(f"WRONG DELIVERIES (another task's, or a gap in seq): {wrong}", flush=True)
    rate = {s: median([r["deliveries_per_s"] for r in runs[s]]) for s in systems}
    cpu = {s: median([r["server_cpu_us_per_delivery"] for r in runs[s]]) for s in systems}
    db_cpu = {s: median([r["database_cpu_us_per_delivery"] for r in runs[s]]) for s in systems}
    pq = rate.get("progressq-memory", float("nan"))
    rows = [
        [
            s,
            BACKEND[s],
            fmt(rate[s]),
            f"{spread([r['deliveries_per_s'] for r in runs[s]]) * 100:.0f}%",
            fmt(cpu[s]),
            fmt(db_cpu[s]),
            fmt(pq / rate[s], 2) if rate[s] else "-",
        ]
        for s in systems
    ]
    table(
        f"Progress fan-out: {users} WebSocket clients, {seconds:g} s (median of {rounds})",
        ["system", "backend", "deliveries/s", "spread", "server CPU us/delivery", "database CPU us", "memory / this"],
        rows,
    )
    peers = [rate[s] for s in PEERS if s in rate]
    best = max(peers) if peers else float("nan")
    limit = rate.get("raw", float("nan"))
    versus = {}
    for backend in ("memory", "redis", "redis-cluster", "postgres"):
        mine = rate.get(f"progressq-{backend}", float("nan"))
        versus[backend] = mine / best if mine == mine and best == best else None
        print(f"progressq-{backend} vs best peer (in memory): {fmt(mine / best, 2)}x", flush=True)
    cluster, single = rate.get("progressq-redis-cluster", float("nan")), rate.get("progressq-redis", float("nan"))
    if cluster == cluster:
        versus["redis_cluster_vs_redis"] = cluster / single if single == single else None
        print(f"progressq-redis-cluster vs progressq-redis: {fmt(cluster / single, 2)}x", flush=True)
    print(
        f"progressq-memory vs best peer: {fmt(pq / best, 2)}x (target >= 1.5x); "
        f"vs raw ASGI: {fmt(pq / limit, 2)}x (target >= 0.8x)",
        flush=True,
    )
    results: dict[str, Any] = {
        "users": users,
        "seconds": seconds,
        "rounds": rounds,
        "backends": BACKEND,
        "runs": runs,
        "median_deliveries_per_s": rate,
        "median_server_cpu_us_per_delivery": cpu,
        "median_database_cpu_us_per_delivery": db_cpu,
        "progressq_vs_best_peer": versus,
        "progressq_vs_limit": pq / limit if limit == limit else None,
    }
    write_results("fanout", results)


if __name__ == "__main__":
    main()
