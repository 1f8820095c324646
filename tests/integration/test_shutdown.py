"""A server with many open WebSockets and event streams shuts down promptly when told
(SIGTERM), and its hub's own shutdown runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.apps import free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def open_event_stream(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    received = b""
    while b"event: snapshot" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


def wait_until_healthy(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)


def read_to_end(sock: socket.socket) -> None:
    while sock.recv(65536):
        pass


async def test_shutdown_with_open_websockets_and_event_streams_runs_the_hubs_shutdown(tmp_path: Path) -> None:
    port = free_port()
    marker = tmp_path / "hub-closed"
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PQ_TEST_MARKER": str(marker)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.shutdown_app:app", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    streams: list[socket.socket] = []
    sockets: list[ClientConnection] = []
    try:
        await anyio.to_thread.run_sync(wait_until_healthy, process, port, log)
        for _ in range(50):
            sockets.append(await connect(f"ws://127.0.0.1:{port}/ws"))
            assert b'"connection"' in (await sockets[-1].recv()).encode()
            streams.append(await anyio.to_thread.run_sync(open_event_stream, port))

        process.send_signal(signal.SIGTERM)
        # Generous for a busy machine; without the streams ending, it never exits by itself.
        exit_code = await anyio.to_thread.run_sync(lambda: process.wait(60))
        # uvicorn raises the signal again once it has shut down: the default action ends it.
        assert exit_code in (0, -signal.SIGTERM), log.read_text(errors="replace")
        assert "Traceback" not in log.read_text(errors="replace")
        assert marker.read_text() == "closed", "the hub's shutdown did not run"
        for stream in streams:  # every event stream was ended, not cut
            await anyio.to_thread.run_sync(read_to_end, stream)
        for ws in sockets:
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in streams:
            stream.close()
        for ws in sockets:
            await ws.close()
