"""Scenario 5: one client that stops reading, among many healthy ones (progressq).

Healthy clients each own a task reporting ``rate`` times a second; their report -> receipt
latency is measured as in scenario 3, once without and once with one more connection that
completes its handshake and then never reads, whose task reports 500 times a second with
~1 KB messages (its socket buffers fill within a second or two; from then on its outbox
merges progress and, if it still cannot keep up, the connection is closed). Each phase runs
on a fresh server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _clients import StalledClient, reading_clients, sample_latencies, start_load
from _common import fmt, median, parser, percentile, raise_file_limit, server, spread, table, write_results

WARMUP = 1.0  # seconds before measuring (0.5 with --quick)


async def measure(port: int, users: int, rate: float, seconds: float, stalled: bool) -> dict[str, float]:
    async with reading_clients("progressq", port, [f"u{i}" for i in range(users)]) as tally:
        slow: StalledClient | None = None
        try:
            if stalled:
                slow = await asyncio.to_thread(StalledClient, port, f"/ws?user=u{users}")
                await start_load(port, users=1, first=users, seconds=seconds + 2 * WARMUP + 0.5, rate=500, size=900)
                await asyncio.sleep(WARMUP)  # its buffers fill
            samples = await sample_latencies(tally, port, users=users, rate=rate, seconds=seconds, warmup=WARMUP)
        finally:
            if slow is not None:
                slow.close()
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99), "samples": len(samples)}


def one_round(users: int, rate: float, seconds: float, stalled: bool) -> dict[str, float]:
    with server("progressq") as (_process, port):
        return asyncio.run(measure(port, users, rate, seconds, stalled))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--users", type=int, default=0, help="healthy connections (default 1000, quick 200)")
    p.add_argument("--rate", type=float, default=5.0, help="reports a second per healthy task")
    p.add_argument("--seconds", type=float, default=0.0)
    args = p.parse_args()
    if args.quick:
        global WARMUP
        WARMUP = 0.5
    raise_file_limit()
    rounds = args.rounds or (1 if args.quick else 3)
    users = args.users or (200 if args.quick else 1000)
    seconds = args.seconds or (1.5 if args.quick else 4.0)
    phases = {"without": False, "with one stalled client": True}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in phases}
    for round_index in range(rounds):
        for name, stalled in phases.items():
            outcome = one_round(users, args.rate, seconds, stalled)
            runs[name].append(outcome)
            print(
                f"  round {round_index + 1}: {name:24} p50 {fmt(outcome['p50_ms'], 2)} ms, "
                f"p99 {fmt(outcome['p99_ms'], 2)} ms ({outcome['samples']} samples)",
                flush=True,
            )
    p50 = {n: median([r["p50_ms"] for r in runs[n]]) for n in phases}
    p99 = {n: median([r["p99_ms"] for r in runs[n]]) for n in phases}
    base = p99["without"]
    rows = [
        [
            n,
            fmt(p50[n], 2),
            fmt(p99[n], 2),
            f"{spread([r['p99_ms'] for r in runs[n]]) * 100:.0f}%",
            f"{(p99[n] / base - 1) * 100:+.0f}%",
        ]
        for n in phases
    ]
    table(
        f"Healthy clients' latency, {users} clients x {args.rate:g}/s, with and without one stalled client "
        f"(median of {rounds})",
        ["phase", "p50 ms", "p99 ms", "p99 spread", "p99 change"],
        rows,
    )
    change = p99["with one stalled client"] / base - 1
    print(f"p99 moved by {change * 100:+.1f}% (target: less than 10%)", flush=True)
    results: dict[str, Any] = {
        "users": users,
        "rate_per_user": args.rate,
        "seconds": seconds,
        "rounds": rounds,
        "runs": runs,
        "median_p50_ms": p50,
        "median_p99_ms": p99,
        "p99_change": change,
    }
    write_results("slow_client", results)


if __name__ == "__main__":
    main()
