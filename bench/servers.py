"""The servers the WebSocket scenarios measure, each run by uvicorn in its own process.

    python bench/servers.py APP --port P [--interval S]

APP: progressq (memory backend), progressq-redis, progressq-redis-cluster, progressq-postgres,
socketio, litestar, raw or port. progressq-redis-cluster runs on the cluster at ``--cluster-url``
(or ``BENCH_CLUSTER_URL``), ``redis+cluster://host:port,...``.

Every app serves WebSockets at a path the clients know (see ``_clients.py``), names the
connection's user from the query string (``?user=u17``), and answers
``POST /bench/start?users=N&seconds=S&rate=R&size=B``: for each of users ``u0..u(N-1)`` a
producer sends progress to that user for ``S`` seconds, ``R`` messages a second (0: as fast as
it can), each message carrying its send time (``time.time()``) for latency. With progressq the
producer is a task whose handler calls ``ctx.report()``; with the peers it is a coroutine that
publishes to the user's room or channel; the raw app sends pre-encoded bytes itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from _common import SECRET, postgres_url, redis_url

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}


class Load:
    """Parameters of one ``/bench/start``."""

    def __init__(self, params: dict[str, str]) -> None:
        self.users = int(params.get("users", "1"))
        self.seconds = float(params.get("seconds", "5"))
        self.rate = float(params.get("rate", "0"))
        self.size = int(params.get("size", "0"))
        self.first = int(params.get("first", "0"))

    def names(self) -> list[str]:
        return [f"u{i}" for i in range(self.first, self.first + self.users)]


async def pace(load: Load, user: str, step: Callable[[int], Awaitable[None]]) -> None:
    """Call ``step(i)`` for ``load.seconds``, at ``load.rate`` a second or as fast as it can.

    At a rate, the users' producers are spread evenly over one interval (user k of N starts
    k/N of an interval late), so that the offered load is steady rather than N messages at
    the same instant every interval.
    """
    interval = 1 / load.rate if load.rate else 0.0
    index = int(user.removeprefix("u")) - load.first if user.startswith("u") else 0
    start = time.monotonic() + interval * (index % load.users) / load.users
    end = start + load.seconds
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            return
        if interval:
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
        await step(i)
        if not interval:
            await asyncio.sleep(0)  # as fast as it can, but let the others run
        i += 1


def view(user: str, i: int, size: int) -> dict[str, Any]:
    """A task view shaped like progressq's, for the peers to send."""
    return {
        "type": "taskProgress",
        "seq": i + 1,
        "task": {
            "id": f"task-{user}",
            "name": "bench",
            "status": "running",
            "progress": min(100.0, i / 10),
            "message": f"{time.time():.6f}" + "x" * size,
            "createdAt": "2025-01-01T00:00:00Z",
            "startedAt": "2025-01-01T00:00:00Z",
            "finishedAt": None,
            "attempt": 1,
        },
    }


async def http_reply(send: Send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


# --- progressq ----------------------------------------------------------------------------------


def progressq_app(
    backend_kind: str, interval: float, concurrency: int, cluster_url: str = "", single_url: str = ""
) -> ASGIApp:
    from progressq import Hub, MemoryBackend, TaskContext
    from progressq.starlette import create_app
    from progressq.transport import RequestInfo, TransportSettings

    if os.environ.get("BENCH_STAGES"):  # where an event's time goes (bench/_stages.py)
        import _stages

        _stages.install()
    backend: Any
    if backend_kind == "redis":
        from progressq.backends.redis import RedisBackend

        backend = RedisBackend.from_url(single_url or redis_url(), prefix=f"bench-{uuid.uuid4().hex[:8]}")
    elif backend_kind == "redis-cluster":
        from progressq.backends.redis import RedisBackend

        if not cluster_url:
            raise SystemExit("progressq-redis-cluster needs --cluster-url or BENCH_CLUSTER_URL")
        backend = RedisBackend.from_url(cluster_url, prefix=f"bench-{uuid.uuid4().hex[:8]}")  # 8 shards
    elif backend_kind == "postgres":
        from progressq.backends.postgres import PostgresBackend

        backend = PostgresBackend.from_url(postgres_url())  # the benchmark's own database
    else:
        backend = MemoryBackend()
    hub = Hub(backend, secret=SECRET, concurrency=concurrency, progress_interval=interval, shutdown_grace=0.5)

    @hub.task("flood", timeout=600)
    async def flood(ctx: TaskContext) -> None:
        load = Load(ctx.payload)
        user = ctx.owner

        async def step(i: int) -> None:
            await ctx.report(min(100.0, i / 10), f"{time.time():.6f}" + "x" * load.size)

        await pace(load, user, step)

    async def identify(request: RequestInfo) -> str | None:
        user: str | None = request.raw.query_params.get("user")
        return user

    app = create_app(hub, TransportSettings(identify=identify, allowed_origins=("*",)))

    async def start(scope: Scope, receive: Receive, send: Send) -> None:
        params = query(scope)
        load = Load(params)
        # At once, not one after another: a submit waits for a few turns of a loop that the
        # tasks already started keep busy, and thousands in turn took longer than the warm-up.
        await asyncio.gather(*(hub.submit("flood", owner=u, name="bench", payload=dict(params)) for u in load.names()))
        await http_reply(send, b"{}")

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/start":
            await start(scope, receive, send)
        else:
            await app(scope, receive, send)

    return outer


# --- python-socketio (rooms) --------------------------------------------------------------------


def socketio_app() -> ASGIApp:
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", logger=False, engineio_logger=False)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        user = parse_qs(environ.get("QUERY_STRING", "")).get("user", ["anonymous"])[0]
        await sio.enter_room(sid, user)

    producers: set[asyncio.Task[None]] = set()

    async def produce(user: str, load: Load) -> None:
        async def step(i: int) -> None:
            await sio.emit("progress", view(user, i, load.size), room=user)

        await pace(load, user, step)

    async def control(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http" or scope["path"] != "/bench/start":
            await http_reply(send, b"{}", 404)
            return
        load = Load(query(scope))
        for user in load.names():
            task = asyncio.create_task(produce(user, load))
            producers.add(task)
            task.add_done_callback(producers.discard)
        await http_reply(send, b"{}")

    app: ASGIApp = socketio.ASGIApp(sio, other_asgi_app=control)
    return app


# --- Litestar channels (memory backend) ---------------------------------------------------------


def litestar_app() -> ASGIApp:
    from litestar import Litestar, WebSocket, post, websocket
    from litestar.channels import ChannelsPlugin
    from litestar.channels.backends.memory import MemoryChannelsBackend
    from litestar.exceptions import WebSocketDisconnect

    channels = ChannelsPlugin(backend=MemoryChannelsBackend(), arbitrary_channels_allowed=True)
    producers: set[asyncio.Task[None]] = set()

    @websocket("/ws")
    async def ws(socket: WebSocket[Any, Any, Any]) -> None:
        user = socket.query_params.get("user", "anonymous")
        await socket.accept()
        async with channels.start_subscription([user]) as subscriber, subscriber.run_in_background(socket.send_data):
            try:
                while True:
                    await socket.receive_data(mode="text")
            except WebSocketDisconnect:
                pass

    async def produce(user: str, load: Load) -> None:
        async def step(i: int) -> None:
            channels.publish(json.dumps(view(user, i, load.size), separators=(",", ":")), channels=[user])

        with contextlib.suppress(RuntimeError):  # the server stopped (the plugin's queue is gone)
            await pace(load, user, step)

    @post("/bench/start", status_code=200)
    async def start(
        users: int = 1, seconds: float = 5, rate: float = 0, size: int = 0, first: int = 0
    ) -> dict[str, Any]:
        load = Load({"users": str(users), "seconds": str(seconds), "rate": str(rate), "size": str(size)})
        load.first = first
        for user in load.names():
            task = asyncio.create_task(produce(user, load))
            producers.add(task)
            task.add_done_callback(producers.discard)
        return {}

    app: ASGIApp = Litestar(route_handlers=[ws, start], plugins=[channels], logging_config=None)
    return app


# --- raw ASGI: pre-encoded bytes, the limit -----------------------------------------------------


def raw_app() -> ASGIApp:
    senders: dict[str, Send] = {}
    producers: set[asyncio.Task[None]] = set()
    frames: dict[int, str] = {}

    async def produce(user: str, load: Load) -> None:
        frame = frames.setdefault(load.size, json.dumps(view(user, 0, load.size), separators=(",", ":")))

        async def step(i: int) -> None:
            send = senders.get(user)
            if send is not None:
                await send({"type": "websocket.send", "text": frame})

        await pace(load, user, step)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            user = query(scope).get("user", "anonymous")
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            senders[user] = send
            try:
                while (await receive())["type"] != "websocket.disconnect":
                    pass
            finally:
                senders.pop(user, None)
        elif scope["path"] == "/bench/start":
            load = Load(query(scope))
            for user in load.names():
                task = asyncio.create_task(produce(user, load))
                producers.add(task)
                task.add_done_callback(producers.discard)
            await http_reply(send, b"{}")
        else:
            await http_reply(send, b"{}", 404)

    return app


# --- the hand-written port: a dict of user -> WebSocket, json.dumps + send_text -------------


def port_app() -> ASGIApp:
    """What a user could write instead of adopting progressq (see ``e2e_servers.py``), with
    one producer coroutine per user here: every user's task runs at once."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    sockets: dict[str, WebSocket] = {}
    producers: set[asyncio.Task[None]] = set()

    async def produce(user: str, load: Load) -> None:
        async def step(i: int) -> None:
            socket = sockets.get(user)
            if socket is not None:
                with contextlib.suppress(Exception):
                    await socket.send_text(json.dumps(view(user, i, load.size)))

        await pace(load, user, step)

    async def ws(socket: WebSocket) -> None:
        user = socket.query_params.get("user", "anonymous")
        await socket.accept()
        sockets[user] = socket
        try:
            while True:
                await socket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if sockets.get(user) is socket:
                del sockets[user]

    async def start(request: Request) -> JSONResponse:
        load = Load(dict(request.query_params))
        for user in load.names():
            task = asyncio.create_task(produce(user, load))
            producers.add(task)
            task.add_done_callback(producers.discard)
        return JSONResponse({})

    app: ASGIApp = Starlette(routes=[WebSocketRoute("/ws", ws), Route("/bench/start", start, methods=["POST"])])
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    apps = [
        "progressq",
        "progressq-redis",
        "progressq-redis-cluster",
        "progressq-postgres",
        "socketio",
        "litestar",
        "raw",
        "port",
    ]
    p.add_argument("app", choices=apps)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.05, help="progressq's progress_interval")
    p.add_argument("--concurrency", type=int, default=2000, help="progressq's tasks at once")
    p.add_argument("--redis-url", default="", help="for progressq-redis (default: the shared Redis, database 14)")
    p.add_argument("--cluster-url", default=os.environ.get("BENCH_CLUSTER_URL", ""), help="for progressq-redis-cluster")
    args = p.parse_args()
    app: ASGIApp
    if args.app.startswith("progressq"):
        kind = args.app.removeprefix("progressq").removeprefix("-") or "memory"
        app = progressq_app(kind, args.interval, args.concurrency, args.cluster_url, args.redis_url)
    elif args.app == "socketio":
        app = socketio_app()
    elif args.app == "litestar":
        app = litestar_app()
    elif args.app == "port":
        app = port_app()
    else:
        app = raw_app()
    # The same settings for every app: one process, compression off, no access log.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        ws_per_message_deflate=False,
        ws_max_queue=32,
        backlog=4096,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
