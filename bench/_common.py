"""What every scenario shares: rounds, medians, tables, JSON results, servers in subprocesses."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))  # queue_throughput.py --redis-port
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "14"))
SECRET = "bench-secret-0123456789abcdef0123"
# The PostgreSQL server (trust auth) and the database the benchmarks make, empty and drop.
POSTGRES_SERVER = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
POSTGRES_DB = os.environ.get("BENCH_POSTGRES_DB", "progressq_bench")  # one of its own per concurrent run


def redis_url(db: int = REDIS_DB) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def postgres_url() -> str:
    return f"{POSTGRES_SERVER}/{POSTGRES_DB}"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer rounds and a smaller load (under a minute in all)")
    p.add_argument("--rounds", type=int, default=0, help="rounds per system (default: 3, quick: 1)")
    p.add_argument("--only", default="", help="comma-separated systems to run (default: all)")
    return p


def selected(only: str, systems: Sequence[str]) -> list[str]:
    if not only:
        return list(systems)
    wanted = {s.strip() for s in only.split(",") if s.strip()}
    return [s for s in systems if s in wanted]


def raise_file_limit(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / median, as a fraction: how noisy the rounds were."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # nan
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    lines = [f"\n## {title}", ""]
    lines.append("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"scenario": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {path.relative_to(BENCH.parent)}", flush=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until ``process`` accepts connections on ``port``; raises if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} did not start (exit {process.poll()})")
        time.sleep(0.05)


@contextlib.contextmanager
def server(
    app: str, *extra: str, ready_timeout: float = 20.0, under: Sequence[str] = (), stop_timeout: float = 10.0
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``bench/servers.py APP`` with uvicorn in its own process on a free port (``under``:
    a command to run it under, valgrind say, whose output is then not shown)."""
    port = free_port()
    command = [*under, sys.executable, str(BENCH / "servers.py"), app, "--port", str(port), *extra]
    process = subprocess.Popen(command, cwd=BENCH.parent, stderr=subprocess.DEVNULL if under else None)
    try:
        wait_for_port(port, process, ready_timeout)
        yield process, port
    finally:
        process.terminate()
        try:
            process.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def redis_cpu(url_port: int) -> float:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=url_port)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@contextlib.contextmanager
def private_redis() -> Iterator[int]:
    """A redis-server of this scenario's own, without persistence, on a free port."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port, child)
            yield port
        finally:
            child.terminate()
            child.wait(10)


@contextlib.contextmanager
def redis_under_callgrind(profile: Path) -> Iterator[int]:
    """A redis-server of the caller's own (no persistence, a free port) run under
    ``valgrind --tool=callgrind``, writing its profile to ``profile``: its port. Shut down at
    the end and waited for, so that the profile is complete when this returns."""
    port = free_port()
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", "redis-server"]
    command += ["--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(profile.parent)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, child, timeout=60)  # valgrind starts slowly
        yield port
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        child.wait(timeout=120)


def callgrind_total(profile: Path, *, without: str = "") -> int:
    """The instructions of a callgrind profile, less those spent in (and below) the function
    ``without``."""
    match = re.search(r"^(?:summary|totals):\s*(\d+)", profile.read_text(), re.MULTILINE)
    assert match, f"no total in {profile}"
    total = int(match.group(1))
    if without:
        annotated = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(profile)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        spent = re.search(rf"^\s*([\d,]+) .*:{without} \[", annotated, re.MULTILINE)
        total -= int(spent.group(1).replace(",", "")) if spent else 0
    return total


def flush_bench_db(db: int = REDIS_DB) -> None:
    """Empty the benchmark's own Redis database (never any other)."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        client.flushdb()
    finally:
        client.close()


def _postgres_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(statement)


def fresh_postgres_db() -> None:
    """An empty benchmark database: dropped (its connections ended) if it exists, created again."""
    drop_postgres_db()
    _postgres_admin(f'CREATE DATABASE "{POSTGRES_DB}"')


def drop_postgres_db() -> None:
    """Drop the benchmark's own PostgreSQL database (never any other), if it exists."""
    _postgres_admin(f'DROP DATABASE IF EXISTS "{POSTGRES_DB}" WITH (FORCE)')
