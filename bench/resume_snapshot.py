"""What a resume that needs a snapshot costs the server, for an identity with many tasks.

An identity with ``--tasks`` finished tasks (kept for a day on Redis) is the worst case of
issue "resume is an amplification lever": every ``resume`` without ``lastSeq`` answers with
a snapshot of its tasks. ``--sockets`` WebSockets of that identity each send ``--resumes``
resumes, waiting for each snapshot; the server (progressq on Redis, its own process) is
measured: CPU seconds per resume, the snapshot's size, and meanwhile the time another
identity's short task takes from start to completion.

    .venv/bin/python bench/resume_snapshot.py [--tasks 1000] [--sockets 16] [--resumes 20]

Needs Redis on 127.0.0.1:6379; uses database 14 (BENCH_REDIS_DB) under a prefix of its own,
deleted afterwards (nothing else is touched).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid

import httpx
import redis
from _common import SECRET, cpu_seconds, free_port, redis_url
from websockets.asyncio.client import connect

SERVE = "--serve"


def build_app(prefix: str) -> object:
    """The server: progressq on Redis, a task that finishes at once and one that sleeps."""
    import anyio

    from progressq import Hub, TaskContext
    from progressq.backends.redis import RedisBackend
    from progressq.starlette import create_app
    from progressq.transport import TransportSettings

    hub = Hub(RedisBackend.from_url(redis_url(), prefix=prefix), secret=SECRET, concurrency=8)

    @hub.task("bench")
    async def bench(ctx: TaskContext) -> None:
        """Finishes at once, or after ``duration`` ms when the name says ``sleep``."""
        if ctx.name == "sleep":
            await anyio.sleep(ctx.payload["duration"] / 1000)
            await ctx.report(100, "slept")

    return create_app(hub, TransportSettings(start_task="bench", max_connections_per_identity=64))


async def seed(http: httpx.AsyncClient, owner: str, count: int) -> None:
    started = 0
    while started < count:
        answer = await http.post(
            "/api/task/start", json={"name": f"t{started}", "duration": 1000}, headers={"X-Client-Id": owner}
        )
        if answer.status_code == 429:  # too many unfinished: let them finish
            await asyncio.sleep(0.05)
            continue
        answer.raise_for_status()
        started += 1
    while True:  # until every one has finished
        tasks = (await http.get("/api/tasks", headers={"X-Client-Id": owner})).json()["tasks"]
        if len(tasks) >= min(count, 1000) and all(t["status"] == "completed" for t in tasks):
            return
        await asyncio.sleep(0.2)


async def resumer(url: str, owner: str, resumes: int, sizes: list[int], counts: list[int]) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.recv()  # connection
        await ws.recv()  # its own (empty) snapshot
        for _ in range(resumes):
            await ws.send(json.dumps({"type": "resume", "clientId": owner}))
            while True:
                text = await ws.recv()
                if '"type":"snapshot"' in text:
                    sizes.append(len(text))
                    if not counts:
                        counts.append(len(json.loads(text)["tasks"]))
                    break
            await asyncio.sleep(0.05)  # within the default rate limit (20/s)


async def other_task_latency(http: httpx.AsyncClient, until: asyncio.Event) -> list[float]:
    """Seconds beyond its own 1 s that another identity's task takes to complete, repeatedly."""
    latencies = []
    other = None
    while not until.is_set():
        began = time.perf_counter()
        headers = {"X-Client-Id": other} if other else {}
        answer = (await http.post("/api/task/start", json={"name": "sleep", "duration": 1000}, headers=headers)).json()
        other = answer["clientId"]
        while True:  # polled, as a page without a connection would
            view = (await http.get(f"/api/task/{answer['id']}", headers={"X-Client-Id": other})).json()
            if view["status"] == "completed":
                break
            await asyncio.sleep(0.02)
        latencies.append(time.perf_counter() - began - 1.0)
    return latencies


async def measure(args: argparse.Namespace, pid: int, port: int) -> dict[str, float | int]:
    from progressq.identity import IdentityAuthority

    owner = IdentityAuthority(SECRET).mint()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        await seed(http, owner, args.tasks)
        sizes: list[int] = []
        counts: list[int] = []
        done = asyncio.Event()
        latency = asyncio.create_task(other_task_latency(http, done))
        cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
        url = f"ws://127.0.0.1:{port}/ws"
        await asyncio.gather(*(resumer(url, owner, args.resumes, sizes, counts) for _ in range(args.sockets)))
        cpu, wall = cpu_seconds(pid) - cpu_before, time.perf_counter() - wall_before
        done.set()
        others = await latency
    count = args.sockets * args.resumes
    return {
        "resumes": count,
        "snapshot_kib": statistics.median(sizes) / 1024,
        "snapshot_tasks": counts[0],
        "server_cpu_s": cpu,
        "cpu_ms_per_resume": cpu / count * 1000,
        "wall_s": wall,
        "other_task_extra_delay_s_max": max(others) if others else float("nan"),
        "other_task_extra_delay_s_median": statistics.median(others) if others else float("nan"),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == SERVE:
        import uvicorn

        uvicorn.run(build_app(sys.argv[3]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--sockets", type=int, default=16)
    p.add_argument("--resumes", type=int, default=20)
    args = p.parse_args()
    prefix = f"bench-resume-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    import subprocess

    server = subprocess.Popen([sys.executable, __file__, SERVE, str(port), prefix], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        result = asyncio.run(measure(args, server.pid, port))
    finally:
        server.terminate()
        server.wait(15)
        client = redis.Redis.from_url(redis_url())
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    width = max(map(len, result))
    for name, value in result.items():
        print(f"{name:<{width}}  {value:.3f}" if isinstance(value, float) else f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
