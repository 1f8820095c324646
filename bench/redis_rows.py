"""Redis's instructions for the worker's commit rows, batches of a fixed size: no timing in it.

``bench/redis_worker_path.py --count`` measures a real worker, whose batches follow the timing
of the moment (group commit): counts of the same code move by up to a tenth from run to run.
Here ``--tasks`` leased tasks report ``--rounds`` times, each round one batch of their progress
rows built by the backend (``_Calls.commit_row``) and sent as the queue sends them
(``_Calls.send``), so a batch holds exactly ``--tasks`` rows. A private ``redis-server`` runs
under ``valgrind --tool=callgrind`` for ``--rounds`` and for twice as many; the difference,
per extra row, is Redis's cost of a progress report (its timer left out, as in
``redis_worker_path.py``). ``--empty`` measures a batch of no rows instead, per call, beside a
script that returns at once with the same arguments: what every batch costs before its rows.

    bench/.venv/bin/python bench/redis_rows.py [--tasks 8] [--rounds 50]
    bench/.venv/bin/python bench/redis_rows.py --empty
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from _common import callgrind_total, redis_under_callgrind
from redis.asyncio import Redis

from progressq.backends.redis import RedisBackend
from progressq.backends.redis._calls import _Calls
from progressq.backends.redis._common import _Keys
from progressq.contracts import TaskRecord


async def reports(url: str, tasks: int, rounds: int) -> None:
    """``tasks`` leased tasks, then ``rounds`` batches of one progress row each."""
    async with RedisBackend.from_url(url, prefix="rows") as backend:
        queue = backend.queue
        for n in range(tasks):
            await queue.enqueue(TaskRecord(id=uuid.uuid4().hex, kind="noop", name="noop", owner=f"u{n}"))
        leases = await queue.lease_many(tasks)
        assert len(leases) == tasks
        calls = queue._calls[0]
        started = datetime.now(UTC)
        records = [lease.record.evolve(status="running", started_at=started) for lease in leases]
        for n in range(rounds):
            records = [record.evolve(progress=(n + 1) * 100 / (rounds + 1), message=f"r{n}") for record in records]
            # the first round restates the status and stores the record whole, as an attempt's
            # first commit does; the later ones change only progress and message: ticks
            rows = [
                calls.commit_row(lease, record, record.view_json(), finish=False, restated=n == 0, tick=n > 0)
                for lease, record in zip(leases, records, strict=True)
            ]
            answers = await calls.send(rows)
            assert all(int(answer) == 1 for answer in answers), answers


async def empty_batches(url: str, calls_made: int, trivial: bool) -> None:
    """``calls_made`` batches of no rows (or, ``trivial``, a script that returns at once)."""
    client = Redis.from_url(url)
    calls = _Calls(client, _Keys("rows"), capacity=0, retention=60, history_size=100, history_ttl=600)
    at_once = client.register_script("return {}")
    for _ in range(calls_made):
        if trivial:
            await at_once(keys=list(calls._shard_keys), args=list(calls._batch_head))
        else:
            await calls.send([])
    await client.aclose()


def _counted(argv: list[str]) -> int:
    """Redis's instructions, less its timer's, while this script runs ``argv`` against it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "redis.out")
        with redis_under_callgrind(out) as port:
            subprocess.run([sys.executable, __file__, "--url", f"redis://127.0.0.1:{port}/0", *argv], check=True)
        return callgrind_total(out, without="serverCron")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="", help="run the workload once against this Redis (no counting)")
    p.add_argument("--tasks", type=int, default=8, help="rows per batch")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--empty", action="store_true", help="batches of no rows, per call")
    p.add_argument("--trivial", action="store_true", help="with --empty and --url: the script that returns at once")
    args = p.parse_args()
    if args.url:
        if args.empty:
            asyncio.run(empty_batches(args.url, args.rounds, args.trivial))
        else:
            asyncio.run(reports(args.url, args.tasks, args.rounds))
        return
    if args.empty:
        rounds = max(args.rounds, 200)
        for name, trivial in (("a batch of no rows", []), ("a script returning at once", ["--trivial"])):
            counts = [_counted(["--empty", "--rounds", str(n), *trivial]) for n in (rounds, 2 * rounds)]
            print(f"{name}: Redis {(counts[1] - counts[0]) / rounds:,.0f} instructions a call")
        return
    counts = [_counted(["--tasks", str(args.tasks), "--rounds", str(n)]) for n in (args.rounds, 2 * args.rounds)]
    per_row = (counts[1] - counts[0]) / (args.tasks * args.rounds)
    print(f"batches of {args.tasks} progress rows: Redis {per_row:,.0f} instructions a row")


if __name__ == "__main__":
    main()
