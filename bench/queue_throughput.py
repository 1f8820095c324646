"""Scenario 1: queue throughput, enqueue -> complete, concurrency 32, one worker process.

Each round runs one system in a fresh process: its worker (32 at once) starts, then the
same process enqueues N tasks (64 enqueues in flight at a time, each library's own call)
while the worker drains them. Measured: from the first enqueue to the end of the last
task's handler. No-op tasks and tasks that sleep 25 ms. Per backend: progressq's memory
backend; on Redis progressq, SAQ, streaQ, arq and taskiq, and a bare Redis Streams loop
(pipelined XADD, XREADGROUP, XACK) as the limit; on PostgreSQL progressq and SAQ. progressq
also runs on a local Redis Cluster (three masters, no replicas, started by the scenario on the
same machine, emptied after each round, stopped at the end; skipped when redis-server or
redis-cli is missing), with its masters' CPU time per task counted from /proc (the shared
Redis's is not: other clients' load would be in it).

``--redis-port PORT`` runs the Redis systems against a Redis of the caller's on that port (one
nobody else uses: ``redis-server --port PORT --save ''``), and then also counts that server's
CPU time per task from /proc, as for the cluster.

Every task carries its index and every round checks that each ran exactly once (a task that
never ran fails the round; repeats are counted and shown in the table); on PostgreSQL also
that the system's own table records every task as complete. The PostgreSQL systems run
in a database of their own (created afresh for each round, dropped at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import _common
import _queue_work
from _cluster import ClusterUnavailable, LocalCluster, local_cluster, missing_tools
from _common import (
    BENCH,
    SECRET,
    cpu_seconds,
    drop_postgres_db,
    flush_bench_db,
    fmt,
    fresh_postgres_db,
    median,
    parser,
    postgres_url,
    redis_url,
    selected,
    spread,
    table,
    write_results,
)
from _queue_peers import CONCURRENCY, run_arq, run_redis_streams, run_saq, run_streaq, run_taskiq
from _queue_work import await_statuses, begin, enqueue_all, finish

# Each system and the backend it runs on; the table lists them in this order.
BACKEND = {
    "progressq-memory": "memory",
    "progressq-redis": "redis",
    "progressq-redis-cluster": "redis-cluster",
    "saq-redis": "redis",
    "streaq": "redis",
    "arq": "redis",
    "taskiq": "redis",
    "redis-streams": "redis",
    "progressq-postgres": "postgres",
    "saq-postgres": "postgres",
}
SYSTEMS = tuple(BACKEND)
# The peers progressq is compared with on each backend (the bare loop is a limit, not a peer).
PEERS = {"redis": ("saq-redis", "streaq", "arq", "taskiq"), "postgres": ("saq-postgres",)}
# The local cluster of this run, while a system on it is selected.
CLUSTER: LocalCluster | None = None
# The process id of the caller's private Redis (``--redis-port``), whose CPU time is counted.
PRIVATE_REDIS_PID: int | None = None


# --- the systems ----------------------------------------------------------------------------


async def run_progressq(n: int, backend_kind: str, tag: str, limit_s: float, url: str = "") -> dict[str, float]:
    from progressq import Hub, MemoryBackend, TaskContext

    backend: Any
    if backend_kind == "redis":
        from progressq.backends.redis import RedisBackend

        # on a cluster (url given) with the default shards, 8
        backend = RedisBackend.from_url(url or redis_url(), prefix=f"bench-{tag}")
    elif backend_kind == "postgres":
        from progressq.backends.postgres import PostgresBackend

        backend = PostgresBackend.from_url(postgres_url())
    else:
        backend = MemoryBackend(capacity=n + 1, retention=n + 1)
    # BENCH_OWNER_LIMIT=0 turns off the per-owner limit on unfinished tasks (default 100),
    # whose check reads the owner's task list on every submit.
    limit = os.environ.get("BENCH_OWNER_LIMIT")
    options: dict[str, Any] = {} if limit is None else {"max_active_per_owner": int(limit) or None}
    hub = Hub(backend, secret=SECRET, concurrency=CONCURRENCY, shutdown_grace=0.5, **options)

    @hub.task("work")
    async def _work(ctx: TaskContext) -> None:
        await _queue_work.work(ctx.payload["i"])

    # At most 50 tasks per owner, so that the default per-owner limit (100 unfinished tasks)
    # never refuses one, whatever the load.
    owners = [f"owner-{i}" for i in range(max(100, n // 50))]
    async with hub:
        start = begin()
        enqueue_s = await enqueue_all(n, lambda i: hub.submit("work", owner=owners[i % len(owners)], params={"i": i}))
        result = await finish(start, enqueue_s, limit_s)
        if backend_kind == "postgres":  # progressq's own record: every task completed
            query = "SELECT status, count(*) FROM progressq.tasks GROUP BY status"
            await await_statuses(postgres_url(), query, {"completed": n})
        return result


async def child(system: str, n: int, sleep: float, limit_s: float, cluster_url: str) -> dict[str, float]:
    _queue_work.reset(n, sleep)
    tag = uuid.uuid4().hex[:8]
    match system:
        case "progressq-redis":
            return await run_progressq(n, "redis", tag, limit_s)
        case "progressq-redis-cluster":
            return await run_progressq(n, "redis", tag, limit_s, url=cluster_url)
        case "progressq-memory":
            return await run_progressq(n, "memory", tag, limit_s)
        case "progressq-postgres":
            return await run_progressq(n, "postgres", tag, limit_s)
        case "saq-redis":
            return await run_saq(n, tag, limit_s)
        case "saq-postgres":
            return await run_saq(n, tag, limit_s, postgres=True)
        case "streaq":
            return await run_streaq(n, tag, limit_s)
        case "arq":
            return await run_arq(n, tag, limit_s)
        case "taskiq":
            return await run_taskiq(n, tag, limit_s)
        case "redis-streams":
            return await run_redis_streams(n, tag, limit_s)
    raise ValueError(system)


def one_round(system: str, n: int, sleep: float, limit_s: float) -> dict[str, float] | None:
    command = [sys.executable, str(BENCH / "queue_throughput.py"), "--child", system, "--n", str(n)]
    command += ["--sleep", str(sleep), "--timeout", str(limit_s)]
    cluster = CLUSTER if BACKEND[system] == "redis-cluster" else None
    if cluster is not None:
        command += ["--cluster-url", cluster.url]
    if BACKEND[system] == "postgres":
        fresh_postgres_db()
    # The masters' CPU over the whole child (its hub's start and stop too, a small part).
    redis_cpu = _redis_cpu_meter(system, cluster)
    redis_cpu0 = redis_cpu()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s + 30, cwd=BENCH.parent)
    except subprocess.TimeoutExpired:
        print(f"  {system}: timed out", flush=True)
        return None
    finally:
        redis_seconds = redis_cpu() - redis_cpu0
        flush_bench_db()
        if cluster is not None:
            cluster.flush()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  {system}: failed (exit {done.returncode})\n{done.stderr[-2000:]}", flush=True)
        return None
    result: dict[str, float] = json.loads(lines[-1])
    result["redis_cpu_us_per_task"] = redis_seconds / n * 1e6
    return result


def _redis_cpu_meter(system: str, cluster: LocalCluster | None) -> Any:
    """What tells the CPU time of the system's Redis so far: the cluster's masters, the
    private Redis (``--redis-port``), or nothing (NaN: the shared Redis has other clients)."""
    if cluster is not None:
        return cluster.cpu_seconds
    if PRIVATE_REDIS_PID is not None and BACKEND[system] == "redis":
        pid = PRIVATE_REDIS_PID
        return lambda: cpu_seconds(pid)
    return lambda: float("nan")


def compare(label: str, medians: dict[str, float]) -> dict[str, float | None]:
    """Print and return each backend's progressq against its best peer (and Redis's limit)."""
    ratios: dict[str, float | None] = {}
    for backend, peers in PEERS.items():
        pq = medians.get(f"progressq-{backend}", float("nan"))
        rates = [medians[s] for s in peers if medians.get(s, float("nan")) == medians.get(s, float("nan"))]
        ratio = pq / max(rates) if rates and pq == pq else float("nan")
        ratios[backend] = ratio if ratio == ratio else None
        print(f"[{label}] progressq-{backend} vs best {backend} peer: {fmt(ratio, 2)}x", flush=True)
    pq, limit = medians.get("progressq-redis", float("nan")), medians.get("redis-streams", float("nan"))
    ratios["redis_limit"] = pq / limit if pq == pq and limit == limit else None
    print(f"[{label}] progressq-redis vs bare Redis Streams: {fmt(pq / limit, 2)}x (target >= 0.7x)", flush=True)
    cluster = medians.get("progressq-redis-cluster", float("nan"))
    if cluster == cluster:
        peers = [medians[s] for s in PEERS["redis"] if medians.get(s, float("nan")) == medians.get(s, float("nan"))]
        best = max(peers) if peers else float("nan")
        ratios["redis_cluster_vs_redis"] = cluster / pq if pq == pq else None
        ratios["redis_cluster_vs_best_redis_peer"] = cluster / best if best == best else None
        print(
            f"[{label}] progressq-redis-cluster vs progressq-redis: {fmt(cluster / pq, 2)}x; "
            f"vs best Redis peer: {fmt(cluster / best, 2)}x",
            flush=True,
        )
    return ratios


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--child", default="")
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--cluster-url", default="", help="the cluster a child runs on (the parent starts one)")
    p.add_argument("--redis-port", type=int, default=0, help="a private Redis for the Redis systems (see above)")
    args = p.parse_args()
    if args.redis_port:
        global PRIVATE_REDIS_PID
        os.environ["BENCH_REDIS_PORT"] = str(args.redis_port)  # the children's
        _common.REDIS_PORT = args.redis_port
        PRIVATE_REDIS_PID = _private_redis_pid(args.redis_port)
    if args.child:
        outcome = asyncio.run(child(args.child, args.n, args.sleep, args.timeout, args.cluster_url))
        print(json.dumps(outcome), flush=True)
        return

    rounds = args.rounds or (1 if args.quick else 3)
    workloads = [("no-op", 1_500 if args.quick else 20_000, 0.0), ("sleep 25 ms", 320 if args.quick else 2_000, 0.025)]
    systems = selected(args.only, SYSTEMS)
    results: dict[str, Any] = {"rounds": rounds, "concurrency": CONCURRENCY, "backends": BACKEND, "workloads": {}}
    limit_s = 60.0 if args.quick else 600.0  # PostgreSQL on a busy machine: 20,000 tasks at ~75 a second
    global CLUSTER
    with contextlib.ExitStack() as stack:
        if "progressq-redis-cluster" in systems:
            reason = missing_tools()
            try:
                CLUSTER = None if reason else stack.enter_context(local_cluster())
            except ClusterUnavailable as exc:
                reason = str(exc)
            if reason:
                print(f"  progressq-redis-cluster: skipped, {reason}", flush=True)
                systems.remove("progressq-redis-cluster")
        try:
            for label, n, sleep in workloads:
                results["workloads"][label] = measure(label, n, sleep, systems, rounds, limit_s)
        finally:
            if any(BACKEND[s] == "postgres" for s in systems):
                drop_postgres_db()
    write_results("queue_throughput", results)


def _private_redis_pid(port: int) -> int:
    """The process id of the Redis on ``port``, which must run on this machine."""
    import redis

    info = redis.Redis(host="127.0.0.1", port=port).info("server")
    return int(info["process_id"])


def measure(label: str, n: int, sleep: float, systems: list[str], rounds: int, limit_s: float) -> dict[str, Any]:
    """Every system's rounds of one workload, its table and its ratios."""
    per_system: dict[str, list[float]] = {s: [] for s in systems}
    cpu: dict[str, list[float]] = {s: [] for s in systems}
    repeats: dict[str, list[int]] = {s: [] for s in systems}
    redis_cpu: dict[str, list[float]] = {s: [] for s in systems}
    for round_index in range(rounds):
        for system in systems:
            outcome = one_round(system, n, sleep, limit_s)
            per_system[system].append(outcome["tasks_per_s"] if outcome else float("nan"))
            cpu[system].append(outcome["cpu_us_per_task"] if outcome else float("nan"))
            repeats[system].append(int(outcome["repeats"]) if outcome else 0)
            redis_cpu[system].append(outcome["redis_cpu_us_per_task"] if outcome else float("nan"))
            print(
                f"  [{label}] round {round_index + 1}: {system:18} {fmt(per_system[system][-1])} tasks/s, "
                f"{fmt(cpu[system][-1])} us CPU a task"
                + (
                    f" (+{fmt(redis_cpu[system][-1])} in Redis)"
                    if redis_cpu[system][-1] == redis_cpu[system][-1]
                    else ""
                )
                + (f", {repeats[system][-1]} tasks ran twice or more" if repeats[system][-1] else ""),
                flush=True,
            )
    medians = {s: median([v for v in vs if v == v]) for s, vs in per_system.items()}
    cpu_medians = {s: median([v for v in vs if v == v]) for s, vs in cpu.items()}
    redis_cpu_medians = {s: median([v for v in vs if v == v]) for s, vs in redis_cpu.items()}
    rows = []
    for system in systems:
        m = medians[system]
        pq = medians.get(f"progressq-{BACKEND[system]}", float("nan"))
        rows.append(
            [
                system,
                BACKEND[system],
                fmt(m),
                f"{spread([v for v in per_system[system] if v == v]) * 100:.0f}%",
                fmt(cpu_medians[system]),
                fmt(redis_cpu_medians[system]),
                str(sum(repeats[system])),
                fmt(pq / m, 2) if m == m and m else "-",
            ]
        )
    table(
        f"Queue throughput, {label}: {n} tasks, concurrency {CONCURRENCY} (tasks/s, median of {rounds})",
        [
            "system",
            "backend",
            "tasks/s",
            "spread",
            "CPU us/task",
            "Redis CPU us/task",
            "repeats",
            "progressq on this backend / this",
        ],
        rows,
    )
    ratios = compare(label, medians)
    return {
        "n": n,
        "sleep_s": sleep,
        "rounds": per_system,
        "cpu_us_per_task": cpu,
        "repeats": repeats,
        "median_tasks_per_s": medians,
        "median_cpu_us_per_task": cpu_medians,
        "redis_cpu_us_per_task": redis_cpu,
        "median_redis_cpu_us_per_task": redis_cpu_medians,
        "progressq_vs_best_peer": ratios,
        "progressq_vs_limit": ratios["redis_limit"],
    }


if __name__ == "__main__":
    main()
