"""WebSocket clients for the scenarios: one asyncio process holding many connections.

Every system's messages carry their send time (``time.time()``, six decimals) in a
``"message":"..."`` field, so latency is read the same way for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

_MARK = '"message":"'
_SPACED_MARK = '"message": "'


def ws_url(system: str, port: int, user: str) -> str:
    if system == "socketio":
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&user={user}"
    return f"ws://127.0.0.1:{port}/ws?user={user}"


def sent_at(text: str) -> float | None:
    at = text.find(_MARK)
    if at < 0:
        at = text.find(_SPACED_MARK)  # json.dumps's default separators
        if at < 0:
            return None
        at += 1
    start = at + len(_MARK)
    try:
        return float(text[start : start + 17])  # "1764000000.123456", then padding if any
    except ValueError:
        return None


class Tally:
    """What all clients received: deliveries, and latency samples while ``sampling``.

    With ``checking``, each client also checks its own deliveries: one task throughout (for
    the peers, its own user's, ``task-<user>``) and ``seq`` without a gap; ``wrong`` counts
    the deliveries that fail it.
    """

    def __init__(self) -> None:
        self.deliveries = 0
        self.sampling = False
        self.latencies: list[float] = []
        self.closed = 0
        self.checking = False
        self.wrong = 0


def _task_and_seq(text: str) -> tuple[str, int]:
    at = text.index('"seq":') + 6
    seq = int(text[at : text.index(",", at)])
    at = text.index('"id":"') + 6
    return text[at : text.index('"', at)], seq


class Client:
    def __init__(self, system: str, connection: ClientConnection, user: str = "") -> None:
        self.system = system
        self.connection = connection
        self.task: asyncio.Task[None] | None = None
        # progressq names its task at random; a peer's task is named after its user
        self.task_id: str | None = None if system.startswith("progressq") else f"task-{user}"
        self.last_seq = 0

    def is_right(self, text: str) -> bool:
        """The delivery is of this client's one task, and its seq follows the last one."""
        try:
            task_id, seq = _task_and_seq(text)
        except ValueError:
            return False
        if self.task_id is None:
            self.task_id = task_id
        right = task_id == self.task_id and (self.last_seq == 0 or seq == self.last_seq + 1)
        self.last_seq = seq
        return right

    async def run(self, tally: Tally) -> None:
        socketio = self.system == "socketio"
        try:
            async for message in self.connection:
                text = message if isinstance(message, str) else message.decode()
                if socketio:
                    if text == "2":
                        await self.connection.send("3")
                        continue
                    if not text.startswith("42"):
                        continue
                elif "taskProgress" not in text:
                    continue
                tally.deliveries += 1
                if tally.checking and not self.is_right(text):
                    tally.wrong += 1
                if tally.sampling:
                    at = sent_at(text)
                    if at is not None:
                        tally.latencies.append(time.time() - at)
        except ConnectionClosed:
            tally.closed += 1


async def open_client(system: str, port: int, user: str) -> Client:
    connection = await connect(
        ws_url(system, port, user),
        compression=None,
        ping_interval=None,
        max_queue=64,
        open_timeout=60,
        close_timeout=2,
    )
    if system == "socketio":
        await connection.recv()  # engine.io open packet
        await connection.send("40")
        while not str(await connection.recv()).startswith("40"):
            pass
    elif system.startswith("progressq"):
        await connection.recv()  # connection
        await connection.recv()  # snapshot
    return Client(system, connection, user)


async def open_clients(system: str, port: int, users: Sequence[str], *, at_once: int = 64) -> list[Client]:
    """Open one connection per user, ``at_once`` handshakes at a time."""
    clients: list[Client | None] = [None] * len(users)
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < len(users):
            index = next_index
            next_index += 1
            for attempt in range(5):
                try:
                    clients[index] = await open_client(system, port, users[index])
                    break
                except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(lane() for _ in range(at_once)))
    return [c for c in clients if c is not None]


def start_reading(clients: Sequence[Client], tally: Tally) -> None:
    for client in clients:
        client.task = asyncio.create_task(client.run(tally))


async def close_clients(clients: Sequence[Client]) -> None:
    async def close(client: Client) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.connection.close(), 2)
        if client.task is not None:
            client.task.cancel()
            with contextlib.suppress(BaseException):
                await client.task

    for first in range(0, len(clients), 500):
        await asyncio.gather(*(close(c) for c in clients[first : first + 500]))


async def start_load(port: int, **params: Any) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"http://127.0.0.1:{port}/bench/start", params=params)
        answer.raise_for_status()


@contextlib.asynccontextmanager
async def reading_clients(system: str, port: int, users: Sequence[str]) -> AsyncIterator[Tally]:
    """One connection per user, every one reading into the yielded tally; closed after."""
    clients = await open_clients(system, port, users)
    tally = Tally()
    start_reading(clients, tally)
    try:
        yield tally
    finally:
        await close_clients(clients)


async def sample_latencies(
    tally: Tally, port: int, *, users: int, rate: float, seconds: float, warmup: float, **load: Any
) -> list[float]:
    """Start the load, skip ``warmup`` seconds, then sample for ``seconds``: latencies in ms."""
    await start_load(port, users=users, seconds=seconds + warmup + 0.5, rate=rate, **load)
    await asyncio.sleep(warmup)
    tally.sampling = True
    await asyncio.sleep(seconds)
    tally.sampling = False
    return [s * 1000 for s in tally.latencies]


class StalledClient:
    """A WebSocket client that completes the handshake and then never reads again."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += self.sock.recv(1)
        if b" 101 " not in answer.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake refused: {answer!r}")

    def close(self) -> None:
        self.sock.close()
