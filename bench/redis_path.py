"""The Redis path's receiving side: what a web process spends on each event it takes from
Redis pub/sub and hands to a local subscriber, beside the hand-written port's subscriber.

A receiving process subscribes for ``--identities`` owners, then another process publishes
``--events`` events to them, in bursts of ``--burst`` concurrent calls (each on its own
connection, as a worker's concurrent tasks publish) with ``--gap`` ms between bursts: the
same pace for every system, so that each reads about as many messages per socket read.

- ``progressq``: ``RedisBackend.registry.attach`` of one sink per owner (a sink that only
  counts); the events published with ``registry.publish`` (its script: seq, history);
- ``port``: the hand-written port's subscriber (``bench/e2e_servers.py``): redis-py's
  ``PubSub.listen()`` with hiredis, a dict lookup of the owner's socket per message; the
  frames ``PUBLISH``-ed as the port's worker does.

Two measures, each printed with progressq's ratio to the port:

- CPU time of the receiving process from its first message to its last, per event (median
  of ``--rounds``): moves with the machine's load;
- with ``--callgrind``, instructions per event: the receiver runs under valgrind's callgrind
  twice, with ``--events`` and twice as many, and the difference is divided by the extra
  events (start-up and subscribing fall out). Load does not move it.

    bench/.venv/bin/python bench/redis_path.py [--events 20000] [--identities 200] [--rounds 3]
    bench/.venv/bin/python bench/redis_path.py --callgrind --events 5000
    bench/.venv/bin/python bench/redis_path.py --only progressq --rounds 1 --profile /tmp/rp  # /tmp/rp.progressq

Uses the shared Redis (``BENCH_REDIS_DB``) under a key prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from _common import fmt, median, parser, redis_url, selected, table, write_results

SYSTEMS = ("progressq", "port")
# a task view as the end-to-end scenario's reports carry it (~230 bytes)
VIEW = (
    b'{"id":"t-%(n)d","name":"e2e","status":"running","progress":%(n)d.0,"message":"r%(n)d",'
    b'"created_at":"2026-12-07T10:00:00.000000+00:00","updated_at":"2026-12-07T10:00:00.000000+00:00",'
    b'"result":null,"error":null,"kind":"e2e"}'
)


# --- the receiving process ------------------------------------------------------------------


async def receive(system: str, url: str, prefix: str, identities: int, events: int) -> None:
    owners = [f"u{i}" for i in range(identities)]
    done = asyncio.Event()
    count = 0
    first = 0.0

    def took() -> None:
        nonlocal count, first
        if count == 0:
            first = time.process_time()
        count += 1
        if count == events:
            done.set()

    if system == "progressq":
        from progressq.backends.redis import RedisBackend
        from progressq.contracts import SinkDefaults

        class Sink(SinkDefaults):
            def deliver(self, event: Any) -> None:
                took()

        async with RedisBackend.from_url(url, prefix=prefix) as backend:
            for owner in owners:
                await backend.registry.attach(owner, Sink())
            print("ready", flush=True)
            await done.wait()
    else:
        from redis.asyncio import Redis

        redis = Redis.from_url(url, decode_responses=True)
        pubsub = redis.pubsub()
        channel = f"{prefix}:owner:"
        sockets = {owner: owner for owner in owners}  # the port's dict of owner -> socket

        async def listen() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message" and sockets.get(message["channel"][len(channel) :]) is not None:
                    took()

        await pubsub.subscribe(*(channel + owner for owner in owners))
        listening = asyncio.create_task(listen())
        print("ready", flush=True)
        await done.wait()
        listening.cancel()
        await pubsub.aclose()
        await redis.aclose()
    print(json.dumps({"events": count, "cpu": time.process_time() - first}), flush=True)


# --- the publishing side --------------------------------------------------------------------


async def publish(system: str, url: str, prefix: str, identities: int, events: int, burst: int, gap: float) -> None:
    owners = [f"u{i}" for i in range(identities)]
    if system == "progressq":
        from progressq.backends.redis import RedisBackend

        async with RedisBackend.from_url(url, prefix=prefix) as backend:
            registry = backend.registry
            for start in range(0, events, burst):
                await asyncio.gather(
                    *(
                        registry.publish(owners[n % identities], "taskProgress", f"t-{n}", n + 1, VIEW % {b"n": n})
                        for n in range(start, min(start + burst, events))
                    )
                )
                await asyncio.sleep(gap)
    else:
        from redis.asyncio import Redis

        redis = Redis.from_url(url)
        channel = f"{prefix}:owner:"
        for start in range(0, events, burst):
            await asyncio.gather(
                *(
                    redis.publish(channel + owners[n % identities], VIEW % {b"n": n})
                    for n in range(start, min(start + burst, events))
                )
            )
            await asyncio.sleep(gap)
        await redis.aclose()


def clean(url: str, prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        keys = [key for match in (f"{prefix}:*", f"{{{prefix}:*") for key in client.scan_iter(match=match, count=500)]
        if keys:
            client.delete(*keys)


def one_round(system: str, args: Any, events: int, callgrind_out: str | None = None) -> dict[str, float]:
    url = redis_url()
    prefix = f"redis-path-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, __file__, "--receive", system, "--prefix", prefix]
    command += ["--identities", str(args.identities), "--events", str(events)]
    if args.profile:
        command += ["--profile", f"{args.profile}.{system}"]
    if callgrind_out:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind_out}", *command]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {system} receiver did not start")
        asyncio.run(publish(system, url, prefix, args.identities, events, args.burst, args.gap / 1000))
        outcome: dict[str, float] = json.loads(child.stdout.readline())
        child.wait(600)
    finally:
        if child.poll() is None:
            child.kill()
        clean(url, prefix)
    if callgrind_out:
        with open(callgrind_out) as file:
            totals = re.search(r"^(?:summary|totals): (\d+)", file.read(), re.M)
        assert totals is not None
        outcome["instructions"] = float(totals.group(1))
    return outcome


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=0, help="events per round (default 20000; 5000 with --callgrind)")
    p.add_argument("--identities", type=int, default=200, help="owners subscribed in the receiving process")
    p.add_argument("--burst", type=int, default=20, help="events published at once")
    p.add_argument("--gap", type=float, default=2.0, help="ms between bursts")
    p.add_argument("--callgrind", action="store_true", help="instructions per event under valgrind's callgrind")
    p.add_argument("--profile", default="", help="write a cProfile of the receiving process to this file")
    p.add_argument("--receive", default="", help=argparse_hidden())
    p.add_argument("--prefix", default="", help=argparse_hidden())
    args = p.parse_args()
    if args.receive:
        import uvloop

        running = receive(args.receive, redis_url(), args.prefix, args.identities, args.events)
        if not args.profile:
            uvloop.run(running)
            return
        import cProfile

        with cProfile.Profile() as profile:
            uvloop.run(running)
        profile.dump_stats(args.profile)
        return
    names = selected(args.only, list(SYSTEMS))
    if args.callgrind:
        if shutil.which("valgrind") is None:
            raise SystemExit("--callgrind needs valgrind")
        events = args.events or 5000
        per_event: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as folder:
            for name in names:
                small = one_round(name, args, events, os.path.join(folder, f"{name}-1.out"))
                large = one_round(name, args, 2 * events, os.path.join(folder, f"{name}-2.out"))
                per_event[name] = (large["instructions"] - small["instructions"]) / events
                print(f"  {name:10} {per_event[name]:,.0f} instructions per event", flush=True)
        rows = [[n, f"{per_event[n]:,.0f}", fmt(per_event[n] / per_event.get("port", float("nan")), 2)] for n in names]
        table(
            f"Redis path, receiving side: instructions per event ({events} vs {2 * events} events)",
            ["system", "instructions / event", "/ port"],
            rows,
        )
        write_results(
            "redis_path_instructions",
            {"events": events, "identities": args.identities, "instructions_per_event": per_event},
        )
        return
    events = args.events or 20000
    rounds = args.rounds or (1 if args.quick else 3)
    runs: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(rounds):
        for name in names:
            outcome = one_round(name, args, events)
            runs[name].append(outcome["cpu"] / outcome["events"] * 1e6)
            print(f"  round {round_index + 1}: {name:10} {fmt(runs[name][-1])} us CPU per event", flush=True)
    cpu = {n: median(runs[n]) for n in names}
    rows = [[n, fmt(cpu[n]), fmt(cpu[n] / cpu.get("port", float("nan")), 2)] for n in names]
    table(
        f"Redis path, receiving side: CPU per event (median of {rounds})", ["system", "CPU us / event", "/ port"], rows
    )
    write_results("redis_path", {"events": events, "identities": args.identities, "rounds": rounds, "runs": runs})


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
