"""The demo server: progressq's routes, the demo's own task and start route, and the page at ``/``.

    python examples/demo/server.py --host 127.0.0.1 --port 8000

The backend is ``--backend``, else the ``PROGRESSQ_BACKEND`` environment variable, else
memory; ``progressq worker demo_worker:hub`` reads the same variable.

Browsers asking ``/`` for HTML get the built page (``examples/demo/web/build``); JSON
clients get the API description. See ``--help`` for the flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn
from demo_task import register_demo_task  # type: ignore[import-not-found,unused-ignore]

from progressq import Hub, MemoryBackend
from progressq.contracts import Backend
from progressq.transport import TransportSettings

PAGE_DIR = Path(__file__).resolve().parent / "web" / "build"
BACKEND_VARIABLE = "PROGRESSQ_BACKEND"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_BACKEND_CHOICES = (
    "memory, redis://HOST:PORT/DB, redis+cluster://HOST:PORT,HOST:PORT,... or postgresql://USER@HOST:PORT/DATABASE"
)

logger = logging.getLogger("progressq.demo")


def make_backend(spec: str) -> Backend:
    """``memory``, a Redis URL (``redis://HOST:PORT/DB``), a Redis Cluster URL
    (``redis+cluster://HOST:PORT,HOST:PORT,...``) or a PostgreSQL URL
    (``postgresql://USER@HOST:PORT/DATABASE``); the web process and its workers must be given
    the same one. Raises ImportError naming the extra when its driver is missing."""
    if spec == "memory":
        return MemoryBackend()
    if spec.startswith(_REDIS_SCHEMES):
        from progressq.backends.redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]

        backend: Backend = RedisBackend.from_url(spec)
        return backend
    if spec.startswith(_POSTGRES_SCHEMES):
        from progressq.backends.postgres import PostgresBackend  # type: ignore[import-not-found,unused-ignore]

        postgres: Backend = PostgresBackend.from_url(spec)
        return postgres
    raise ValueError(f"--backend must be {_BACKEND_CHOICES}, not {spec!r}")


def build_app(args: argparse.Namespace) -> Any:
    hub = Hub(
        make_backend(args.backend),
        secret=os.environ.get("PROGRESSQ_SECRET"),
        concurrency=args.workers_in_process,
    )
    register_demo_task(hub)
    where = getattr(hub.backend, "url", "memory")  # a Redis or PostgreSQL URL without its password
    logger.info("backend: %s, running %d task(s) at once here", where, args.workers_in_process)
    if args.workers_in_process == 0:
        logger.warning(
            "this process runs no tasks: start workers on the same backend, e.g. "
            "%s=%s progressq worker demo_worker:hub (from examples/demo)",
            BACKEND_VARIABLE,
            where,
        )
    settings = TransportSettings(allowed_origins=tuple(args.allowed_origin))
    if args.framework == "litestar":
        from demo_litestar import build_litestar_app  # type: ignore[import-not-found,unused-ignore]

        return build_litestar_app(hub, settings, PAGE_DIR)
    from demo_starlette import build_starlette_app

    return build_starlette_app(hub, settings, PAGE_DIR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="progressq demo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--framework", choices=("starlette", "litestar"), default="starlette")
    parser.add_argument(
        "--backend",
        default=os.environ.get(BACKEND_VARIABLE) or "memory",
        help=f"{_BACKEND_CHOICES} (default: ${BACKEND_VARIABLE}, else memory)",
    )
    parser.add_argument("--workers-in-process", type=int, default=8, help="tasks run at once here (0: none)")
    parser.add_argument("--allowed-origin", action="append", default=[], help="also accept WebSockets from URL")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.backend != "memory" and not args.backend.startswith((*_REDIS_SCHEMES, *_POSTGRES_SCHEMES)):
        print(f"--backend must be {_BACKEND_CHOICES}, not {args.backend!r}", file=sys.stderr)
        return 2
    try:
        app = build_app(args)
    except ImportError as exc:  # an extra this run needs is not installed: say which
        print(f"--framework {args.framework} --backend {args.backend}: {exc}", file=sys.stderr)
        print(
            'install it with: pip install -e ".[starlette,litestar,redis,postgres]" (bash scripts/demo does)',
            file=sys.stderr,
        )
        return 2
    if not (PAGE_DIR / "index.html").exists():
        logger.warning("the page is not built (%s); / answers with the API description", PAGE_DIR)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws_per_message_deflate=False)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
