"""Scenario 4: server memory per idle WebSocket connection.

The server's resident memory (RSS) is read after a few warm-up connections, then after
``N`` more idle connections are open (each handshaken and, for progressq, past its
``connection`` and ``snapshot`` messages; for the peers, in its room or channel). Per
connection = the difference / N.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from _clients import close_clients, open_clients
from _common import fmt, median, parser, raise_file_limit, rss_bytes, selected, server, spread, table, write_results

SYSTEMS = ("progressq", "socketio", "litestar", "raw")
PEERS = ("socketio", "litestar")
SETTLE = 1.0  # seconds for the server to settle before each reading (0.5 with --quick)


async def measure(system: str, port: int, pid: int, connections: int) -> dict[str, float]:
    warm = await open_clients(system, port, [f"w{i}" for i in range(20)])
    await asyncio.sleep(SETTLE)
    before = rss_bytes(pid)
    clients = await open_clients(system, port, [f"u{i}" for i in range(connections)], at_once=100)
    gc.collect()
    await asyncio.sleep(2 * SETTLE)
    after = rss_bytes(pid)
    await close_clients([*warm, *clients])
    return {
        "kb_per_connection": (after - before) / len(clients) / 1024,
        "connections": len(clients),
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
    }


def one_round(system: str, connections: int) -> dict[str, float]:
    with server(system) as (process, port):
        return asyncio.run(measure(system, port, process.pid, connections))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--connections", type=int, default=0, help="default 10000, quick 500")
    args = p.parse_args()
    if args.quick:
        global SETTLE
        SETTLE = 0.5
    limit = raise_file_limit()
    rounds = args.rounds or 1
    connections = min(args.connections or (500 if args.quick else 10_000), limit // 2 - 100)
    systems = selected(args.only, SYSTEMS)
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    for round_index in range(rounds):
        for system in systems:
            outcome = one_round(system, connections)
            runs[system].append(outcome)
            print(
                f"  round {round_index + 1}: {system:10} {fmt(outcome['kb_per_connection'])} KB/connection "
                f"(RSS {fmt(outcome['rss_before_mb'])} -> {fmt(outcome['rss_after_mb'])} MB)",
                flush=True,
            )
    kb = {s: median([r["kb_per_connection"] for r in runs[s]]) for s in systems}
    raw = kb.get("raw", float("nan"))
    rows = [
        [
            s,
            fmt(kb[s]),
            f"{spread([r['kb_per_connection'] for r in runs[s]]) * 100:.0f}%",
            fmt(kb[s] - raw) if s != "raw" else "",
        ]
        for s in systems
    ]
    table(
        f"Memory per idle WebSocket, {connections} connections (median of {rounds})",
        ["system", "KB/connection", "spread", "above raw ASGI (KB)"],
        rows,
    )
    print(
        f"progressq above the raw baseline: {fmt(kb.get('progressq', float('nan')) - raw)} KB (target: at most 10 KB)",
        flush=True,
    )
    results: dict[str, Any] = {"connections": connections, "rounds": rounds, "runs": runs, "median_kb": kb}
    write_results("idle_memory", results)


if __name__ == "__main__":
    main()
