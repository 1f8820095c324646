"""The ``progressq`` command: ``progressq worker MODULE:HUB [--concurrency N]``, and for an
operator ``progressq status MODULE:HUB`` and ``progressq dead list|retry|purge MODULE:HUB``.

Runs the workers of an application's :class:`~progressq.Hub` in this process, on the hub's
backend (a Redis or PostgreSQL backend, so that tasks submitted by web processes reach it). SIGTERM or
SIGINT stops it gracefully: no new task is taken, running ones get the hub's
``shutdown_grace`` seconds to finish, then the unfinished ones are handed back to the queue
for another worker. A second signal hands them back at once.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

import anyio

from progressq.backends.memory import MemoryBackend
from progressq.contracts import QueueStatistics
from progressq.errors import TaskNotFound
from progressq.hub import Hub

__all__ = ("load_hub", "main")

logger = logging.getLogger("progressq.cli")

_DEFAULT_CONCURRENCY = 8


class HubNotFound(Exception):
    """``MODULE:HUB`` does not name a Hub."""


def load_hub(spec: str) -> Hub:
    """Import ``module.path:attribute`` (the attribute may be dotted) and return that Hub.

    The current directory is importable, as when running ``python -m``.

    Raises:
        HubNotFound: the spec is malformed, the module cannot be imported or the object
            is not a :class:`~progressq.Hub`.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise HubNotFound(f"expected MODULE:HUB (for example myapp.tasks:hub), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise HubNotFound(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HubNotFound(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, Hub):
        raise HubNotFound(f"{spec} is a {type(target).__name__}, not a progressq.Hub")
    return target


async def run_worker(hub: Hub, *, spec: str = "hub") -> None:
    """Run ``hub``'s workers until SIGTERM/SIGINT, then shut down gracefully."""
    stop = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals, anyio.CancelScope() as force:

        async def watch_signals() -> None:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not stop.is_set():
                    logger.warning(
                        "%s: taking no new task; running ones get %g s to finish, then go back to the queue",
                        name,
                        hub.shutdown_grace,
                    )
                    stop.set()
                else:
                    logger.warning("%s again: handing running tasks back now", name)
                    force.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(watch_signals)
            async with hub:
                logger.info(
                    "progressq worker %s: pid %d, backend %s, concurrency %d, task kinds: %s",
                    spec,
                    os.getpid(),
                    hub.backend.describe(),
                    hub.concurrency,
                    ", ".join(hub.kinds) or "(none)",
                )
                if isinstance(hub.backend, MemoryBackend):
                    logger.warning("the hub's backend is in memory: this worker sees only tasks submitted in it")
                await stop.wait()
            group.cancel_scope.cancel()
    logger.info("progressq worker %s: stopped", spec)


async def run_operation(hub: Hub, command: str, action: str | None, task_ids: Sequence[str]) -> int:
    """``status`` or ``dead ACTION``, on ``hub`` opened without workers; prints its answer."""
    hub.concurrency = 0
    async with hub:
        if command == "status":
            print(describe_statistics(await hub.queue.statistics()))
            return 0
        if action == "list":
            for record in await hub.dead_letters(1000):
                when = record.finished_at.isoformat() if record.finished_at else "-"
                print(f"{record.id}  {record.kind}  attempt {record.attempt}  {when}  {record.error}")
            return 0
        if action == "purge":
            print(f"purged {await hub.purge_dead()}")
            return 0
        failed = 0
        for task_id in task_ids:
            try:
                again = await hub.replay(task_id)
            except TaskNotFound:
                print(f"{task_id}: no such failed task", file=sys.stderr)
                failed += 1
            else:
                print(f"{task_id}: submitted again as {again.id}")
        return 1 if failed else 0


def describe_statistics(statistics: QueueStatistics) -> str:
    """One line of counts: ``queued 3  running 2  scheduled 1  dead 0  workers 2``; a count
    the backend does not keep is ``-``."""
    counts = {
        "queued": statistics.queued,
        "running": statistics.running,
        "scheduled": statistics.scheduled,
        "dead": statistics.dead,
        "workers": statistics.workers,
    }
    return "  ".join(f"{name} {'-' if count is None else count}" for name, count in counts.items())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``progressq`` console script."""
    parser = argparse.ArgumentParser(prog="progressq", description="progressq command line")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker",
        help="run a hub's task workers in this process",
        description="Run the task workers of MODULE:HUB (a progressq.Hub) in this process, on the hub's backend.",
    )
    worker.add_argument("hub", metavar="MODULE:HUB", help="where the Hub is, e.g. myapp.tasks:hub")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help=f"tasks run at once (default: the hub's own, or {_DEFAULT_CONCURRENCY} if it runs none)",
    )
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    status = commands.add_parser(
        "status",
        help="queue depths: queued (scheduled among them), running, dead (failed) tasks, workers alive",
    )
    status.add_argument("hub", metavar="MODULE:HUB")
    dead = commands.add_parser("dead", help="list, retry or purge the failed tasks")
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dead.add_argument("hub", metavar="MODULE:HUB")
    dead.add_argument("task_ids", metavar="TASK_ID", nargs="*", help="the failed tasks to submit again (retry)")
    args = parser.parse_args(argv)
    if args.command != "worker":
        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
        if args.command == "dead" and args.action == "retry" and not args.task_ids:
            parser.error("dead retry needs the ids of the tasks to submit again")
        try:
            hub = load_hub(args.hub)
        except HubNotFound as exc:
            parser.error(str(exc))
        operation = functools.partial(
            run_operation, hub, args.command, getattr(args, "action", None), getattr(args, "task_ids", ())
        )
        return anyio.run(operation, backend="asyncio")

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    try:
        hub = load_hub(args.hub)
    except HubNotFound as exc:
        parser.error(str(exc))
    hub.concurrency = args.concurrency or hub.concurrency or _DEFAULT_CONCURRENCY
    try:
        anyio.run(functools.partial(run_worker, hub, spec=args.hub), backend="asyncio")
    except KeyboardInterrupt:  # pragma: no cover - a signal before the handler was installed
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
