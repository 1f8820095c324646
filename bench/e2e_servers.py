"""The servers of the end-to-end scenario (``bench/end_to_end.py``), each run by uvicorn.

    python bench/e2e_servers.py SYSTEM --port P --redis-url U --prefix X [--worker-apart]
    python bench/e2e_servers.py SYSTEM --worker --redis-url U --prefix X   # its worker alone

SYSTEM is ``port``, ``port-redis``, ``socketio``, ``socketio-redis``, ``progressq`` or
``progressq-redis``. Every one serves WebSockets at ``/ws?user=U`` (socketio: its own path,
``?user=U``) and starts one task for user U on an HTTP POST (progressq: its own start route
``POST /api/tasks/e2e?user=U``; the others ``POST /start?user=U``), answering the task's id.
A task sends its owner ``2 + REPORTS + 1`` events of the same shape everywhere (a task view
like progressq's): queued, running, ``REPORTS`` progress reports with only a cooperative
yield between them (message ``r0``, ``r1``, ...), completed. ``CONCURRENCY`` tasks run at once.

The hand-written port is what a user could write instead of adopting progressq: a dict of
user → WebSocket, an asyncio queue, ``CONCURRENCY`` worker coroutines, ``json.dumps`` and
``send_text`` to the owner's socket. Its multi-process form over Redis: jobs ``LPUSH``/
``BRPOP``, one ``PUBLISH`` per frame to a channel per owner, one subscriber per web process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from _common import SECRET

REPORTS = int(os.environ.get("E2E_REPORTS", "200"))
CONCURRENCY = 64
SYSTEMS = ("port", "port-redis", "socketio", "socketio-redis", "progressq", "progressq-redis")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


def frame(task_id: str, status: str, progress: float, message: str, created: str) -> dict[str, Any]:
    """One event as the peers send it: progressq's event shape, without ``seq``."""
    now = datetime.now(UTC).isoformat()
    return {
        "type": "taskQueued" if status == "queued" else "taskProgress",
        "task": {
            "id": task_id,
            "name": "e2e",
            "status": status,
            "progress": progress,
            "message": message,
            "createdAt": created,
            "startedAt": None if status == "queued" else created,
            "finishedAt": now if status == "completed" else None,
            "attempt": 0 if status == "queued" else 1,
        },
    }


async def run_task(task_id: str, user: str, created: str, emit: Emit) -> None:
    """The peers' task body: running, the reports, completed."""
    await emit(user, frame(task_id, "running", 0.0, "started", created))  # progressq says "started"
    for i in range(REPORTS):
        await emit(user, frame(task_id, "running", (i + 1) * 100 / REPORTS, f"r{i}", created))
        await asyncio.sleep(0)
    await emit(user, frame(task_id, "completed", 100.0, "done", created))


def new_task() -> tuple[str, str]:
    return uuid.uuid4().hex, datetime.now(UTC).isoformat()


# --- the hand-written port: one process, or over Redis ------------------------------------


def port_app(redis_url: str | None, prefix: str, workers_here: bool) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    sockets: dict[str, WebSocket] = {}
    jobs: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    async def send_to(user: str, data: str) -> None:
        socket = sockets.get(user)
        if socket is not None:
            with contextlib.suppress(Exception):  # gone: its frames are dropped
                await socket.send_text(data)

    async def emit_here(user: str, event: dict[str, Any]) -> None:
        await send_to(user, json.dumps(event))

    async def worker_here() -> None:
        while True:
            task_id, user, created = await jobs.get()
            await run_task(task_id, user, created, emit_here)

    redis: Any = None
    pubsub: Any = None
    channel = f"{prefix}:owner:"

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                await send_to(message["channel"][len(channel) :], message["data"])

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        nonlocal redis, pubsub
        tasks: list[asyncio.Task[None]] = []
        if redis_url is None:
            tasks += [asyncio.create_task(worker_here()) for _ in range(CONCURRENCY)]
        else:
            from redis.asyncio import Redis

            redis = Redis.from_url(redis_url, decode_responses=True)
            pubsub = redis.pubsub()
            await pubsub.subscribe(f"{prefix}:hello")  # listen() ends when nothing is subscribed
            tasks.append(asyncio.create_task(listen()))
            if workers_here:
                tasks += [asyncio.create_task(redis_worker(redis, prefix)) for _ in range(CONCURRENCY)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if redis is not None:
                await pubsub.aclose()
                await redis.aclose()

    async def ws(socket: WebSocket) -> None:
        user = socket.query_params["user"]
        if pubsub is not None:
            await pubsub.subscribe(channel + user)
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
                if pubsub is not None:
                    await pubsub.unsubscribe(channel + user)

    async def start(request: Request) -> JSONResponse:
        user = request.query_params["user"]
        task_id, created = new_task()
        queued = json.dumps(frame(task_id, "queued", 0.0, "", created))
        if redis is None:
            await send_to(user, queued)
            jobs.put_nowait((task_id, user, created))
        else:
            await redis.publish(channel + user, queued)
            await redis.lpush(f"{prefix}:jobs", json.dumps([task_id, user, created]))
        return JSONResponse({"id": task_id})

    return Starlette(routes=[WebSocketRoute("/ws", ws), Route("/start", start, methods=["POST"])], lifespan=lifespan)


async def redis_worker(redis: Any, prefix: str) -> None:
    """One of the port's worker coroutines over Redis: BRPOP a job, PUBLISH each frame."""
    channel = f"{prefix}:owner:"

    async def emit(user: str, event: dict[str, Any]) -> None:
        await redis.publish(channel + user, json.dumps(event))

    while True:
        _, job = await redis.brpop([f"{prefix}:jobs"], timeout=0)
        task_id, user, created = json.loads(job)
        await run_task(task_id, user, created, emit)


async def port_worker_process(redis_url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url, decode_responses=True)
    await asyncio.gather(*(redis_worker(redis, prefix) for _ in range(CONCURRENCY)))


# --- python-socketio: rooms, or its Redis manager -----------------------------------------


def socketio_app(redis_url: str | None, prefix: str) -> ASGIApp:
    import socketio

    manager = socketio.AsyncRedisManager(redis_url, channel=prefix) if redis_url else None
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=manager, cors_allowed_origins="*", logger=False, engineio_logger=False
    )
    jobs: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, parse_qs(environ.get("QUERY_STRING", ""))["user"][0])

    async def emit(user: str, event: dict[str, Any]) -> None:
        await sio.emit("task", event, room=user)

    async def worker() -> None:
        while True:
            task_id, user, created = await jobs.get()
            await run_task(task_id, user, created, emit)

    workers: list[asyncio.Task[None]] = []

    async def control(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                workers.extend(asyncio.create_task(worker()) for _ in range(CONCURRENCY))
                await send({"type": "lifespan.startup.complete"})
            for task in workers:
                task.cancel()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http" or scope["path"] != "/start":
            await reply(send, b"{}", 404)
            return
        user = parse_qs(scope["query_string"].decode())["user"][0]
        task_id, created = new_task()
        await emit(user, frame(task_id, "queued", 0.0, "", created))
        jobs.put_nowait((task_id, user, created))
        await reply(send, json.dumps({"id": task_id}).encode())

    app: ASGIApp = socketio.ASGIApp(sio, other_asgi_app=control)
    return app


async def reply(send: Send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


# --- progressq ------------------------------------------------------------------------------


def progressq_hub(redis_url: str | None, prefix: str, concurrency: int) -> Any:
    from progressq import Hub, MemoryBackend, TaskContext

    backend: Any
    if redis_url is not None:
        from progressq.backends.redis import RedisBackend

        backend = RedisBackend.from_url(redis_url, prefix=prefix)
    else:
        backend = MemoryBackend()
    # progress_interval=0: every report is an event, as with the peers (none coalesced away).
    hub = Hub(backend, secret=SECRET, concurrency=concurrency, progress_interval=0, shutdown_grace=0.5)

    @hub.task("e2e", timeout=600)
    async def e2e(ctx: TaskContext) -> None:
        for i in range(REPORTS):
            await ctx.report((i + 1) * 100 / REPORTS, f"r{i}")
            await asyncio.sleep(0)

    return hub


def progressq_app(redis_url: str | None, prefix: str, workers_here: bool) -> ASGIApp:
    from progressq.starlette import create_app
    from progressq.transport import RequestInfo, TransportSettings

    hub = progressq_hub(redis_url, prefix, CONCURRENCY if workers_here else 0)

    async def identify(request: RequestInfo) -> str | None:
        user: str | None = request.raw.query_params.get("user")
        return user

    app: ASGIApp = create_app(hub, TransportSettings(identify=identify, allowed_origins=("*",)))
    return app


async def progressq_worker_process(redis_url: str, prefix: str) -> None:
    from progressq.__main__ import run_worker

    await run_worker(progressq_hub(redis_url, prefix, CONCURRENCY))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("system", choices=SYSTEMS)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--redis-url", default="")
    p.add_argument("--prefix", default="e2e")
    p.add_argument("--worker-apart", action="store_true", help="the tasks run in another process (--worker)")
    p.add_argument("--worker", action="store_true", help="run only the worker of SYSTEM (a Redis system)")
    args = p.parse_args()
    redis_url = args.redis_url if args.system.endswith("-redis") else None
    if args.worker:
        import uvloop

        assert redis_url, "only the Redis systems have a worker of their own"
        runner = port_worker_process if args.system == "port-redis" else progressq_worker_process
        with contextlib.suppress(KeyboardInterrupt):  # how it is stopped
            uvloop.run(runner(redis_url, args.prefix))
        return
    app: ASGIApp
    if args.system.startswith("port"):
        app = port_app(redis_url, args.prefix, not args.worker_apart)
    elif args.system.startswith("socketio"):
        app = socketio_app(redis_url, args.prefix)
    else:
        app = progressq_app(redis_url, args.prefix, not args.worker_apart)
    profile = os.environ.get("E2E_PROFILE")  # a file: the web process's cProfile stats, written on exit
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        # The same settings for every system: one process, uvloop and httptools, no compression.
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            ws_per_message_deflate=False,
            backlog=4096,
            timeout_keep_alive=60,  # a saturated server must not close the start requests' connections
        )
    except KeyboardInterrupt:  # uvicorn raises the SIGINT it stopped on again, once stopped
        pass
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile}.{args.system}")


if __name__ == "__main__":
    main()
