from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.apps import RunningServer
from tests.waiting import PATIENCE


@pytest.fixture
def anyio_backend() -> str:
    # The WebSocket client library runs on asyncio; the server runs in its own thread.
    return "asyncio"


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http, timeout=PATIENCE) as client:
        yield client
