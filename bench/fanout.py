"""Scenario 2: progress fan-out, deliveries per second at many WebSocket clients.

Each user has one connection and one producer that sends progress as fast as it can
(progressq: a task calling ``ctx.report()`` in a loop, ``progress_interval=0`` so no report is
coalesced away at the source; the peers: a coroutine publishing to the user's room or channel;
raw ASGI: pre-encoded bytes sent straight to the socket). The server runs in its own process
(uvicorn, one worker, compression off), the clients in this one. Counted: progress messages
received by all clients per second, after a warm-up; and the server's CPU time per delivery.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _clients import reading_clients, start_load
from _common import (
    cpu_seconds,
    fmt,
    median,
    parser,
    raise_file_limit,
    selected,
    server,
    spread,
    table,
    write_results,
)

SYSTEMS = ("progressq", "socketio", "litestar", "raw")
PEERS = ("socketio", "litestar")
WARMUP = 1.0  # seconds before measuring (0.5 with --quick)


async def measure(system: str, port: int, pid: int, users: int, seconds: float) -> dict[str, float]:
    async with reading_clients(system, port, [f"u{i}" for i in range(users)]) as tally:
        await start_load(port, users=users, seconds=seconds + WARMUP + 0.5, rate=0)
        await asyncio.sleep(WARMUP)
        count0, cpu0, t0 = tally.deliveries, cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        count1, cpu1, t1 = tally.deliveries, cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(0.5)  # the producers end: closing 200+ sockets under a flood is slow
    delivered = count1 - count0
    return {
        "deliveries_per_s": delivered / (t1 - t0),
        "server_cpu_us_per_delivery": (cpu1 - cpu0) / delivered * 1e6 if delivered else float("nan"),
        "server_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "clients": users,
        "closed": tally.closed,
    }


def one_round(system: str, users: int, seconds: float) -> dict[str, float]:
    extra = ["--interval", "0"] if system == "progressq" else []
    with server(system, *extra) as (process, port):
        return asyncio.run(measure(system, port, process.pid, users, seconds))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--users", type=int, default=0, help="connections (default 1000, quick 200)")
    p.add_argument("--seconds", type=float, default=0.0)
    args = p.parse_args()
    if args.quick:
        global WARMUP
        WARMUP = 0.5
    raise_file_limit()
    rounds = args.rounds or (1 if args.quick else 3)
    users = args.users or (200 if args.quick else 1000)
    seconds = args.seconds or (1.5 if args.quick else 4.0)
    systems = selected(args.only, SYSTEMS)
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    for round_index in range(rounds):
        for system in systems:
            outcome = one_round(system, users, seconds)
            runs[system].append(outcome)
            print(
                f"  round {round_index + 1}: {system:10} {fmt(outcome['deliveries_per_s'])} deliveries/s, "
                f"server {fmt(outcome['server_cpu_us_per_delivery'])} us CPU each "
                f"({outcome['server_cpu_share'] * 100:.0f}% of a core), {outcome['closed']} closed",
                flush=True,
            )
    rate = {s: median([r["deliveries_per_s"] for r in runs[s]]) for s in systems}
    cpu = {s: median([r["server_cpu_us_per_delivery"] for r in runs[s]]) for s in systems}
    pq = rate.get("progressq", float("nan"))
    rows = [
        [
            s,
            fmt(rate[s]),
            f"{spread([r['deliveries_per_s'] for r in runs[s]]) * 100:.0f}%",
            fmt(cpu[s]),
            fmt(pq / rate[s], 2) if rate[s] else "-",
        ]
        for s in systems
    ]
    table(
        f"Progress fan-out: {users} WebSocket clients, {seconds:g} s (median of {rounds})",
        ["system", "deliveries/s", "spread", "server CPU us/delivery", "progressq / this"],
        rows,
    )
    peers = [rate[s] for s in PEERS if s in rate]
    best = max(peers) if peers else float("nan")
    limit = rate.get("raw", float("nan"))
    print(
        f"progressq vs best peer: {fmt(pq / best, 2)}x (target >= 1.5x); "
        f"vs raw ASGI: {fmt(pq / limit, 2)}x (target >= 0.8x)",
        flush=True,
    )
    results: dict[str, Any] = {
        "users": users,
        "seconds": seconds,
        "rounds": rounds,
        "runs": runs,
        "median_deliveries_per_s": rate,
        "median_server_cpu_us_per_delivery": cpu,
        "progressq_vs_best_peer": pq / best if best == best else None,
        "progressq_vs_limit": pq / limit if limit == limit else None,
    }
    write_results("fanout", results)


if __name__ == "__main__":
    main()
