"""Many WebSocket clients at little cost, spread over several processes.

At thousands of clients the clients' own work decides what is measured: a Python process
holding every socket through a full WebSocket library (a task, a parser, a queue and a
decoded string per message) spends more CPU than the server it measures, on the same cores.
Here each client is an asyncio protocol on uvloop that makes the handshake itself and only
splits the server's frames: a frame is counted if it contains ``taskProgress`` (found in the
bytes, nothing decoded) and, inside the measured window, the send time after ``"message":"``
is read. Pings are answered; nothing else is parsed.

The parent starts ``processes`` children (each holds its share of the users), waits until
every connection is open, then names a window on the monotonic clock (one clock for every
process of the machine); each child counts what arrived in it and reports its counts, its
latency samples and its own CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

_PROGRESS = b"taskProgress"
_MARK = b'"message":"'
_SPACED_MARK = b'"message": "'  # json.dumps's default separators
_PONG_HEADER = bytes([0x8A, 0x80])  # FIN + pong, masked, length added below
_MASK = b"\x00\x00\x00\x00"  # a client must mask; a zero mask leaves the payload as it is


class Window:
    """The measured window, the same for every connection of a process."""

    __slots__ = ("deliveries", "end", "latencies", "live", "start", "total")

    def __init__(self) -> None:
        self.start = float("inf")
        self.end = float("inf")
        self.deliveries = 0  # progress frames that arrived inside the window
        self.total = 0  # progress frames that arrived at all
        self.live = 0  # connections that have had a progress frame (their task runs)
        self.latencies: list[float] = []  # seconds, for the frames inside the window


class RawClient(asyncio.Protocol):
    """One WebSocket connection that counts progress frames and reads their send time."""

    __slots__ = ("buffer", "closed", "greeting", "handshaken", "live", "opened", "request", "transport", "window")

    def __init__(self, request: bytes, window: Window, opened: asyncio.Future[None], greeting: int) -> None:
        self.request = request
        self.greeting = greeting  # text frames the server sends first; open once they came
        self.window = window
        self.opened: asyncio.Future[None] | None = opened
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.handshaken = False
        self.live = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            self.handshaken = True
            if b" 101 " not in status and self.opened is not None:
                opened, self.opened = self.opened, None
                opened.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                return
            self.opened = self._greeted(self.opened)
        self._frames(buffer)

    def _greeted(self, opened: asyncio.Future[None] | None) -> asyncio.Future[None] | None:
        """None once the connection is open: the handshake done and the greeting received."""
        if opened is not None and self.greeting <= 0:
            opened.set_result(None)
            return None
        return opened

    def _frames(self, buffer: bytearray) -> None:
        window = self.window
        now = time.monotonic()
        sampling = window.start <= now < window.end
        wall = time.time() if sampling else 0.0
        at, size = 0, len(buffer)
        while size - at >= 2:
            opcode, length = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
            begin = at + 2
            if length == 126:
                if size - at < 4:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 4], "big")
                begin = at + 4
            elif length == 127:
                if size - at < 10:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 10], "big")
                begin = at + 10
            end = begin + length
            if end > size:
                break
            if opcode == 1:
                if self.opened is not None:  # a greeting frame (progressq: connection, snapshot)
                    self.greeting -= 1
                    self.opened = self._greeted(self.opened)
                elif buffer.find(_PROGRESS, begin, end) >= 0:
                    window.total += 1
                    if not self.live:
                        self.live = True
                        window.live += 1
                    if sampling:
                        window.deliveries += 1
                        sent = _sent_at(buffer, begin, end)
                        if sent is not None:
                            window.latencies.append(wall - sent)
            elif opcode == 9 and self.transport is not None:  # ping: the same payload back
                self.transport.write(_PONG_HEADER[:1] + bytes([0x80 | length]) + _MASK + buffer[begin:end])
            at = end
        if at:
            del buffer[:at]


def _sent_at(buffer: bytearray, begin: int, end: int) -> float | None:
    at = buffer.find(_MARK, begin, end)
    if at >= 0:
        at += len(_MARK)
    else:
        at = buffer.find(_SPACED_MARK, begin, end)
        if at < 0:
            return None
        at += len(_SPACED_MARK)
    try:
        return float(buffer[at : at + 17])  # "1764000000.123456", then padding if any
    except ValueError:
        return None


def _request(port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _open_all(port: int, paths: Sequence[str], window: Window, at_once: int, greeting: int) -> list[RawClient]:
    loop = asyncio.get_running_loop()
    clients: list[RawClient] = []
    queue = list(reversed(paths))

    async def lane() -> None:
        while queue:
            path = queue.pop()
            for attempt in range(8):
                opened: asyncio.Future[None] = loop.create_future()
                try:
                    _, client = await loop.create_connection(
                        lambda: RawClient(_request(port, path), window, opened, greeting),  # noqa: B023
                        "127.0.0.1",
                        port,
                    )
                    await asyncio.wait_for(opened, 60)
                    clients.append(client)
                    break
                except (OSError, TimeoutError, ConnectionError):
                    if attempt == 7:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(lane() for _ in range(at_once)))
    return clients


async def _child_main(pipe: Connection, port: int, paths: Sequence[str], at_once: int, greeting: int) -> None:
    loop = asyncio.get_running_loop()
    window = Window()
    clients = await _open_all(port, paths, window, at_once, greeting)
    pipe.send(("open", len(clients)))
    while (command := await loop.run_in_executor(None, pipe.recv)) == "live":
        pipe.send(("live", window.live))
    start, end = command
    window.start, window.end = start, end
    cpu_start = _own_cpu()
    await asyncio.sleep(max(0.0, end - time.monotonic()) + 0.05)
    cpu = _own_cpu() - cpu_start
    closed = sum(1 for c in clients if c.closed)
    pipe.send(("measured", window.deliveries, window.latencies, closed, cpu, window.total))
    await loop.run_in_executor(None, pipe.recv)  # told to close
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    await asyncio.sleep(0.2)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(pipe: Connection, port: int, paths: Sequence[str], at_once: int, greeting: int) -> None:
    try:
        import uvloop

        uvloop.run(_child_main(pipe, port, paths, at_once, greeting))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            pipe.send(("error", repr(exc)))
        raise


@dataclass
class Measured:
    """What every client of every process received inside the window."""

    deliveries: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds
    closed: int = 0
    client_cpu: float = 0.0  # seconds, all client processes together
    total: int = 0


class Swarm:
    """Client processes holding one connection per path; see the module's docstring."""

    def __init__(self, port: int, paths: Sequence[str], processes: int, *, greeting: int, at_once: int = 32) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._children: list[Any] = []
        self._end = 0.0
        for index in range(processes):
            share = list(paths[index::processes])
            if not share:
                continue
            ours, theirs = context.Pipe()
            child = context.Process(target=_child, args=(theirs, port, share, at_once, greeting), daemon=True)
            child.start()
            self._pipes.append(ours)
            self._children.append(child)
        self.opened = sum(self._expect(pipe, "open")[1] for pipe in self._pipes)

    @staticmethod
    def _expect(pipe: Connection, kind: str, timeout: float = 600.0) -> tuple[Any, ...]:
        if not pipe.poll(timeout):
            raise RuntimeError(f"a client process did not answer {kind!r} in {timeout:g} s")
        message: tuple[Any, ...] = pipe.recv()
        if message[0] != kind:
            raise RuntimeError(f"a client process answered {message!r}, not {kind!r}")
        return message

    def wait_live(self, wanted: int, timeout: float) -> int:
        """Wait until ``wanted`` connections have had a progress frame (or ``timeout`` seconds
        went by): how many had."""
        deadline = time.monotonic() + timeout
        while True:
            for pipe in self._pipes:
                pipe.send("live")
            live = sum(self._expect(pipe, "live")[1] for pipe in self._pipes)
            if live >= wanted or time.monotonic() >= deadline:
                return int(live)
            time.sleep(0.25)

    def open_window(self, start: float, end: float) -> None:
        """Count what arrives between ``start`` and ``end`` (``time.monotonic()``)."""
        self._end = end
        for pipe in self._pipes:
            pipe.send((start, end))

    def collect(self) -> Measured:
        """What the window held, from every process (once the window has ended)."""
        measured = Measured()
        for pipe in self._pipes:
            _, deliveries, latencies, closed, cpu, total = self._expect(
                pipe, "measured", self._end - time.monotonic() + 120
            )
            measured.deliveries += deliveries
            measured.latencies.extend(latencies)
            measured.closed += closed
            measured.client_cpu += cpu
            measured.total += total
        return measured

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send("close")
        for child in self._children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join(5)


@contextlib.contextmanager
def swarm(port: int, paths: Sequence[str], processes: int, *, greeting: int = 0) -> Iterator[Swarm]:
    """``greeting``: the text frames each server sends a new connection before anything else
    (progressq: its connection and snapshot messages); a client counts as open after them,
    as a browser's page would, so that the load starts on connections that are set up."""
    clients = Swarm(port, paths, processes, greeting=greeting)
    try:
        yield clients
    finally:
        clients.close()


def default_processes() -> int:
    return max(2, os.cpu_count() or 2)
