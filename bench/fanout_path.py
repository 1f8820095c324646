"""progressq's own cost per fan-out delivery, in one process, without sockets.

The fan-out scenario's producers (a task per user calling ``ctx.report()`` in a loop,
``progress_interval=0``, an ``asyncio.sleep(0)`` after each report) against one connection per
user whose ASGI ``send`` does nothing: what is left is progressq's part of a delivery, without
the WebSocket write every system pays. ``--without connections`` publishes to no connection
(the engine and the registry alone); ``--without reports`` runs the producers' loop alone.

``--count`` runs this script under valgrind's callgrind with ``--reports`` and three times as
many reports per task and prints the difference per report: instructions per delivery, which a
busy machine does not move.

    bench/.venv/bin/python bench/fanout_path.py --count [--without connections|reports]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from _common import SECRET

from progressq import Hub, MemoryBackend, TaskContext
from progressq.transport import RequestInfo, TransportSettings
from progressq.transport._adapters import AsgiWebSocketPeer
from progressq.transport._connection import Connection
from progressq.transport._identity import IdentityResolver


async def run(users: int, reports: int, without: str) -> None:
    hub = Hub(MemoryBackend(), secret=SECRET, concurrency=2 * users, progress_interval=0)
    finished = asyncio.Event()
    running = users

    @hub.task("flood", timeout=600)
    async def flood(ctx: TaskContext) -> None:
        nonlocal running
        for i in range(reports):
            if without != "reports":
                await ctx.report(min(100.0, i / 10), f"{time.time():.6f}")
            await asyncio.sleep(0)
        running -= 1
        if not running:
            finished.set()

    async def send(message: dict[str, Any]) -> None:  # an ASGI send that costs nothing
        pass

    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "websocket.disconnect"}

    async with hub:
        resolver = IdentityResolver(hub.identities, None)
        connections = []
        for i in range(0 if without else users):
            peer = AsgiWebSocketPeer(receive, send)
            connection = Connection(hub, TransportSettings(), resolver, peer, RequestInfo({}), f"s{i}")
            connections.append(asyncio.create_task(connection.run(f"u{i}")))
        await asyncio.sleep(0.1)
        for i in range(users):
            await hub.submit("flood", owner=f"u{i}", name="bench", payload={})
        await finished.wait()
        gone.set()
        await asyncio.gather(*connections, return_exceptions=True)


def count(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--count needs valgrind")
    totals = []
    with tempfile.TemporaryDirectory() as folder:
        for reports in (args.reports, 3 * args.reports):
            out = Path(folder) / f"{reports}.out"
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
            command += ["--users", str(args.users), "--reports", str(reports), "--without", args.without]
            subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
            total = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
            assert total is not None
            totals.append(int(total.group(1)))
    per_delivery = (totals[1] - totals[0]) / (args.users * 2 * args.reports)
    print(f"{per_delivery:,.0f} instructions per report ({args.without or 'with connections'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--reports", type=int, default=50, help="reports per task (--count: this and 3 times as many)")
    p.add_argument("--without", choices=["", "connections", "reports"], default="")
    p.add_argument("--count", action="store_true", help="instructions per delivery under callgrind")
    args = p.parse_args()
    if args.count:
        count(args)
        return
    uvloop.run(run(args.users, args.reports, args.without))


if __name__ == "__main__":
    main()
