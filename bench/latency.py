"""Scenario 3: latency from ``ctx.report()`` (or a peer's publish) to receipt at the client.

Steady offered loads, from well below saturation up: at each load (messages a second in
all) every user's producer sends ``rate`` messages a second for a few seconds; each message
carries its send time, the client subtracts it from the time it received the message (both
``time.time()`` on this machine). progressq runs with its default ``progress_interval``
(50 ms): reports 100 ms apart are each sent at once, none coalesced.

A load is *saturated* for a system when its server process is busy 90% of a core or more, or
when fewer than 98% of the messages sent during the measured seconds arrived in them: the
server (one process, one event loop) no longer has time to spare, its queues grow, and its
latency is the length of its backlog, not its latency. The targets (p99 under 2 ms on the
memory backend, under 5 ms on Redis) are judged at the loads below saturation.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _clients import reading_clients, sample_latencies
from _common import (
    cpu_seconds,
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
WARMUP = 1.0  # seconds before measuring (0.5 with --quick)
KEPT_UP = 0.98  # the share of the offered messages that must arrive for a load to count as unsaturated
BUSY = 0.9  # the share of a core the server may use for a load to count as unsaturated


async def measure(system: str, port: int, pid: int, users: int, rate: float, seconds: float) -> dict[str, float]:
    async with reading_clients(system, port, [f"u{i}" for i in range(users)]) as tally:
        cpu0 = cpu_seconds(pid)
        samples = await sample_latencies(tally, port, users=users, rate=rate, seconds=seconds, warmup=WARMUP)
        busy = (cpu_seconds(pid) - cpu0) / (seconds + WARMUP)
    offered = users * rate * seconds
    return {
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples) if samples else float("nan"),
        "samples": len(samples),
        "offered_per_s": users * rate,
        "delivered_share": len(samples) / offered if offered else float("nan"),
        "server_cpu_share": busy,
    }


def one_round(system: str, users: int, rate: float, seconds: float) -> dict[str, float]:
    with server(system) as (process, port):
        return asyncio.run(measure(system, port, process.pid, users, rate, seconds))


def saturated(outcome: dict[str, float]) -> bool:
    return outcome["delivered_share"] < KEPT_UP or outcome["server_cpu_share"] >= BUSY


def verdict(system: str, outcome: dict[str, float]) -> str:
    p99 = outcome["p99_ms"]
    if outcome["saturated"]:
        return "saturated"
    if system not in TARGET_P99_MS:
        return ""
    return f"< {TARGET_P99_MS[system]:g} ms: {'met' if p99 < TARGET_P99_MS[system] else 'MISSED'}"


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument(
        "--loads", default="", help="offered messages a second, comma-separated (default 1000,2500,5000; quick 1000)"
    )
    p.add_argument("--rate", type=float, default=10.0, help="messages a second per user")
    p.add_argument("--seconds", type=float, default=0.0)
    args = p.parse_args()
    if args.quick:
        global WARMUP
        WARMUP = 0.5
    raise_file_limit()
    rounds = args.rounds or (1 if args.quick else 3)
    loads = [int(x) for x in (args.loads or ("1000" if args.quick else "1000,2500,5000")).split(",")]
    seconds = args.seconds or (1.5 if args.quick else 3.0)
    systems = selected(args.only, SYSTEMS)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {s: {load: [] for load in loads} for s in systems}
    for round_index in range(rounds):
        for load in loads:
            users = max(1, round(load / args.rate))
            for system in systems:
                outcome = one_round(system, users, args.rate, seconds)
                runs[system][load].append(outcome)
                print(
                    f"  round {round_index + 1}: {load:>6,} msg/s {system:16} p50 {fmt(outcome['p50_ms'], 2)} ms, "
                    f"p99 {fmt(outcome['p99_ms'], 2)} ms, {outcome['delivered_share'] * 100:.0f}% delivered, "
                    f"server {outcome['server_cpu_share'] * 100:.0f}% of a core",
                    flush=True,
                )
    rows = []
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for system in systems:
        summary[system] = {}
        for load in loads:
            rounds_here = runs[system][load]
            p50 = median([r["p50_ms"] for r in rounds_here])
            p99 = median([r["p99_ms"] for r in rounds_here])
            delivered = median([r["delivered_share"] for r in rounds_here])
            busy = median([r["server_cpu_share"] for r in rounds_here])
            summary[system][load] = {
                "p50_ms": p50,
                "p99_ms": p99,
                "delivered_share": delivered,
                "server_cpu_share": busy,
            }
            summary[system][load]["saturated"] = saturated(summary[system][load])
            rows.append(
                [
                    system,
                    f"{load:,}",
                    fmt(p50, 2),
                    fmt(p99, 2),
                    f"{spread([r['p99_ms'] for r in rounds_here]) * 100:.0f}%",
                    f"{delivered * 100:.0f}%",
                    f"{busy * 100:.0f}%",
                    verdict(system, summary[system][load]),
                ]
            )
    table(
        f"Latency report -> client: {args.rate:g} messages/s per client, {seconds:g} s per load (median of {rounds})",
        ["system", "offered msg/s", "p50 ms", "p99 ms", "p99 spread", "delivered", "server CPU", "target p99"],
        rows,
    )
    for system, target in TARGET_P99_MS.items():
        if system not in summary:
            continue
        below = [load for load in loads if not summary[system][load]["saturated"]]
        if not below:
            print(f"{system}: saturated at every load measured", flush=True)
            continue
        worst = max(summary[system][load]["p99_ms"] for load in below)
        print(
            f"{system}: p99 at most {fmt(worst, 2)} ms at the loads it keeps up with "
            f"(up to {max(below):,} msg/s): target < {target:g} ms "
            f"{'met' if worst < target else 'MISSED'}",
            flush=True,
        )
    results: dict[str, Any] = {
        "loads": loads,
        "rate_per_user": args.rate,
        "seconds": seconds,
        "rounds": rounds,
        "kept_up_share": KEPT_UP,
        "busy_share": BUSY,
        "runs": {s: {str(load): r for load, r in by_load.items()} for s, by_load in runs.items()},
        "summary": {s: {str(load): v for load, v in by_load.items()} for s, by_load in summary.items()},
    }
    write_results("latency", results)


if __name__ == "__main__":
    main()
