"""The demo server: progressq's routes, the demo's own task and start route, and the page at ``/``.

    python examples/demo/server.py --host 127.0.0.1 --port 8000

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

logger = logging.getLogger("progressq.demo")


def make_backend(spec: str) -> Backend:
    if spec == "memory":
        return MemoryBackend()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        try:
            from progressq.backends.redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise SystemExit(2) from None
        backend: Backend = RedisBackend.from_url(spec)
        return backend
    raise ValueError(spec)


def build_app(args: argparse.Namespace) -> Any:
    hub = Hub(
        make_backend(args.backend),
        secret=os.environ.get("PROGRESSQ_SECRET"),
        concurrency=args.workers_in_process,
    )
    register_demo_task(hub)
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
    parser.add_argument("--backend", default="memory", help="memory, or redis://HOST:PORT/DB")
    parser.add_argument("--workers-in-process", type=int, default=8, help="tasks run at once here (0: none)")
    parser.add_argument("--allowed-origin", action="append", default=[], help="also accept WebSockets from URL")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.backend != "memory" and not args.backend.startswith(("redis://", "rediss://", "unix://")):
        print(f"--backend must be memory or redis://HOST:PORT/DB, not {args.backend!r}", file=sys.stderr)
        return 2
    try:
        app = build_app(args)
    except SystemExit as exc:
        print(f"--backend {args.backend}: not yet supported (the Redis backend is missing)", file=sys.stderr)
        return int(exc.code or 2)
    except ImportError:
        print(f"--framework {args.framework}: not yet supported", file=sys.stderr)
        return 2
    if not (PAGE_DIR / "index.html").exists():
        logger.warning("the page is not built (%s); / answers with the API description", PAGE_DIR)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws_per_message_deflate=False)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
