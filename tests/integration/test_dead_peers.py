"""Connections whose client vanished are released: killed, or frozen without a close frame."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import anyio
import httpx
import pytest

from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

# A client in its own process, so that it can be killed or frozen like a real one.
CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect

async def main():
    async with connect(sys.argv[1]) as ws:
        await ws.recv()
        await ws.recv()
        print("connected", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def connections(http: httpx.AsyncClient) -> int:
    count: int = (await http.get("/api/task/status")).json()["connections"]
    return count


async def wait_for_connections(http: httpx.AsyncClient, expected: int, within: float) -> None:
    with anyio.fail_after(within):
        while await connections(http) != expected:
            await anyio.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
async def test_a_vanished_client_is_released(make_server: Any, how: signal.Signals) -> None:
    ping_interval, ping_timeout = 0.5, 0.5
    uvicorn_options = {"ws_ping_interval": ping_interval, "ws_ping_timeout": ping_timeout}
    with make_server(uvicorn=uvicorn_options) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            baseline = await connections(http)
            client = subprocess.Popen([sys.executable, "-c", CLIENT, server.ws], stdout=subprocess.PIPE, text=True)
            try:
                assert client.stdout is not None
                assert await anyio.to_thread.run_sync(client.stdout.readline) == "connected\n"
                assert await connections(http) == baseline + 1
                client.send_signal(how)
                # Within ping interval + timeout (and some slack for a busy machine).
                await wait_for_connections(http, baseline, within=PATIENCE)
            finally:
                client.kill()
                client.wait()
                if client.stdout is not None:
                    client.stdout.close()
