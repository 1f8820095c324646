"""One PNG chart per scenario from ``bench/results/*.json`` (``--out`` to write them elsewhere)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import RESULTS

PROGRESSQ = "#2a6fdb"
OTHER = "#9aa5b1"
LIMIT = "#3d4852"


def colour(name: str) -> str:
    if name.startswith("progressq"):
        return PROGRESSQ
    return LIMIT if name in ("raw", "redis-streams") else OTHER


def bars(ax: Any, values: dict[str, float], title: str, unit: str, *, log: bool = False) -> None:
    """One horizontal bar per system, its value written beside it; ``log`` for values that
    span orders of magnitude (the backends of one scenario)."""
    names = list(values)
    numbers = [values[n] for n in names]
    ax.barh(names, numbers, color=[colour(n) for n in names])
    if log:
        ax.set_xscale("log")
        shown = [v for v in numbers if v == v and v > 0]
        if shown:  # bars start at the power of ten below the smallest, not at an arbitrary edge
            ax.set_xlim(left=10 ** math.floor(math.log10(min(shown))))
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)
    for i, v in enumerate(numbers):
        if v == v:
            label = f" {v:,.0f}" if v >= 100 else f" {v:.1f}" if v >= 10 else f" {v:.2f}"
            ax.text(v, i, label, va="center", fontsize=8)


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=RESULTS)
    out: Path = p.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if data := load("queue_throughput"):
        workloads = data["workloads"]
        systems = max(len(w["median_tasks_per_s"]) for w in workloads.values())
        fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 1.0 + 0.32 * systems))
        for ax, (label, w) in zip(axes if len(workloads) > 1 else [axes], workloads.items(), strict=True):
            unit = "tasks/s, log scale (higher is better)"
            bars(ax, w["median_tasks_per_s"], f"{label}: {w['n']:,} tasks", unit, log=True)
        fig.tight_layout()
        fig.savefig(out / "bench-queue-throughput.png", dpi=110)
        written.append("bench-queue-throughput.png")
    if data := load("fanout"):
        fig, ax = plt.subplots(figsize=(6.5, 1.0 + 0.32 * len(data["median_deliveries_per_s"])))
        title = f"Progress fan-out, {data['users']} clients"
        bars(ax, data["median_deliveries_per_s"], title, "deliveries/s, log scale", log=True)
        fig.tight_layout()
        fig.savefig(out / "bench-fanout.png", dpi=110)
        written.append("bench-fanout.png")
    if data := load("latency"):
        fig, ax = plt.subplots(figsize=(6.5, 3.0))
        loads = [int(x) for x in data["loads"]]
        for name, by_load in data["summary"].items():
            kept = [x for x in loads if not by_load[str(x)]["saturated"]]
            ax.plot(
                kept,
                [by_load[str(x)]["p99_ms"] for x in kept],
                marker="o",
                label=name,
                color=colour(name) if name == "progressq" else None,
                linestyle="--" if name == "progressq-redis" else "-",
            )
        ax.set_xlabel("offered messages/s (loads below the system's saturation)")
        ax.set_ylabel("p99 ms (lower is better)")
        ax.set_title("Report -> client latency, p99", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench-latency.png", dpi=110)
        written.append("bench-latency.png")
    if data := load("idle_memory"):
        fig, ax = plt.subplots(figsize=(6.5, 2.8))
        bars(ax, data["median_kb"], f"Memory per idle WebSocket, {data['connections']:,} open", "KB (lower is better)")
        fig.tight_layout()
        fig.savefig(out / "bench-idle-memory.png", dpi=110)
        written.append("bench-idle-memory.png")
    if data := load("slow_client"):
        fig, ax = plt.subplots(figsize=(6.5, 2.4))
        phases = list(data["median_p99_ms"])
        bars(ax, {f"{n}": data["median_p99_ms"][n] for n in phases}, "Healthy clients' p99", "ms (lower is better)")
        fig.tight_layout()
        fig.savefig(out / "bench-slow-client.png", dpi=110)
        written.append("bench-slow-client.png")
    if data := load("end_to_end"):
        fig, ax = plt.subplots(figsize=(9.0, 3.4))
        labels = data["labels"]
        cpu = data["median_server_cpu_us_per_event"]
        bars(ax, {labels[n]: v for n, v in cpu.items()}, "End to end: server CPU per event", "µs (lower is better)")
        fig.tight_layout()
        fig.savefig(out / "bench-end-to-end.png", dpi=110)
        written.append("bench-end-to-end.png")
    if data := load("scaling"):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.2))
        for name, by_size in data["summary"].items():
            style = {"marker": "o", "label": data["labels"][name], "linestyle": "--" if "redis" in name else "-"}
            style["color"] = PROGRESSQ if name.startswith("progressq") else LIMIT
            sizes = sorted(int(n) for n in by_size)  # each system at the sizes it ran (Redis: fewer)
            left.plot(sizes, [by_size[str(n)]["server_cpu_us_per_event"] for n in sizes], **style)
            right.plot(sizes, [by_size[str(n)]["p99_ms"] for n in sizes], **style)
        left.set_title("Server CPU per event", fontsize=10)
        left.set_ylabel("µs (lower is better)")
        right.set_title("Delivery latency, p99", fontsize=10)
        right.set_ylabel("ms (log scale)")
        right.set_yscale("log")
        for ax in (left, right):
            ax.set_xlabel("live clients, one report a second each")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench-scaling.png", dpi=110)
        written.append("bench-scaling.png")
    print("charts:", ", ".join(str(out / w) for w in written))


if __name__ == "__main__":
    main()
