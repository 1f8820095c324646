"""Scenario 3: latency from ``ctx.report()`` (or a peer's publish) to receipt at the client.

A steady load below saturation: each user's producer sends ``rate`` messages a second for a
few seconds; each message carries its send time, the client subtracts it from the time it
received the message (both ``time.time()`` on this machine). progressq runs with its default
``progress_interval`` (50 ms): reports 100 ms apart are each sent at once, none coalesced.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _clients import Tally, close_clients, open_clients, start_load, start_reading
from _common import (
    fmt,
    median,
    parser,
    percentile,
    raise_file_limit,
    selected,
    server,
    spread,
    table,
    write_results,
)

SYSTEMS = ("progressq", "progressq-redis", "socketio", "litestar")
TARGET_P99_MS = {"progressq": 2.0, "progressq-redis": 5.0}
WARMUP = 1.0


async def measure(system: str, port: int, users: int, rate: float, seconds: float) -> dict[str, float]:
    clients = await open_clients(system, port, [f"u{i}" for i in range(users)])
    tally = Tally()
    start_reading(clients, tally)
    try:
        await start_load(port, users=users, seconds=seconds + WARMUP + 0.5, rate=rate)
        await asyncio.sleep(WARMUP)
        tally.sampling = True
        await asyncio.sleep(seconds)
        tally.sampling = False
        await asyncio.sleep(1.0)
    finally:
        await close_clients(clients)
    samples = [s * 1000 for s in tally.latencies]
    return {
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples) if samples else float("nan"),
        "samples": len(samples),
        "offered_per_s": users * rate,
    }


def one_round(system: str, users: int, rate: float, seconds: float) -> dict[str, float]:
    with server(system) as (_process, port):
        return asyncio.run(measure(system, port, users, rate, seconds))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--users", type=int, default=0, help="connections (default 500, quick 100)")
    p.add_argument("--rate", type=float, default=10.0, help="messages a second per user")
    p.add_argument("--seconds", type=float, default=0.0)
    args = p.parse_args()
    raise_file_limit()
    rounds = args.rounds or (1 if args.quick else 3)
    users = args.users or (100 if args.quick else 500)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    systems = selected(args.only, SYSTEMS)
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    for round_index in range(rounds):
        for system in systems:
            outcome = one_round(system, users, args.rate, seconds)
            runs[system].append(outcome)
            print(
                f"  round {round_index + 1}: {system:16} p50 {fmt(outcome['p50_ms'], 2)} ms, "
                f"p99 {fmt(outcome['p99_ms'], 2)} ms ({outcome['samples']} samples)",
                flush=True,
            )
    p50 = {s: median([r["p50_ms"] for r in runs[s]]) for s in systems}
    p99 = {s: median([r["p99_ms"] for r in runs[s]]) for s in systems}
    rows = [
        [
            s,
            fmt(p50[s], 2),
            fmt(p99[s], 2),
            f"{spread([r['p99_ms'] for r in runs[s]]) * 100:.0f}%",
            f"< {TARGET_P99_MS[s]:g} ms: {'met' if p99[s] < TARGET_P99_MS[s] else 'MISSED'}"
            if s in TARGET_P99_MS
            else "",
        ]
        for s in systems
    ]
    table(
        f"Latency report -> client: {users} clients x {args.rate:g}/s = {users * args.rate:,.0f} msg/s, "
        f"{seconds:g} s (median of {rounds})",
        ["system", "p50 ms", "p99 ms", "p99 spread", "target p99"],
        rows,
    )
    results: dict[str, Any] = {
        "users": users,
        "rate_per_user": args.rate,
        "seconds": seconds,
        "rounds": rounds,
        "runs": runs,
        "median_p50_ms": p50,
        "median_p99_ms": p99,
    }
    write_results("latency", results)


if __name__ == "__main__":
    main()
