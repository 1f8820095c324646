"""A client that stops reading costs bounded memory and never hurts the others."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest

from progressq.transport import CLOSE_SLOW_CONSUMER, TransportSettings
from tests.integration.client import WsClient, start_task
from tests.integration.raw_ws import StalledClient
from tests.integration.test_tasks import assert_gapless
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

TASKS = 4
REPORTS = 300  # per task: with small socket buffers, far more than a stalled client's path holds
SEND_BUFFER = 4096  # the server's kernel send buffer per connection, so that a stalled client backs up soon


async def test_a_stalled_client_is_merged_or_closed_and_others_get_everything(make_server: Any) -> None:
    # A send may wait as long as the test does: the stalled client is closed for its backlog
    # (or served merged), never dropped because a busy machine made the flood slow.
    settings = TransportSettings(outbox_size=32, send_timeout=PATIENCE * 2)
    # One worker more than the flood, so that the healthy client's task never waits behind it.
    # uvicorn's keepalive is off: a client that reads nothing answers no ping either, and when a
    # busy machine makes the test outlast a ping and its timeout, uvicorn (not progressq) would
    # close it with 1011; what is tested here is progressq's own handling of the backlog.
    with make_server(
        settings,
        progress_interval=0,
        concurrency=TASKS + 1,
        send_buffer=SEND_BUFFER,
        uvicorn={"ws_ping_interval": None},
    ) as server:
        stalled = StalledClient(server.port, timeout=PATIENCE)
        try:
            hello = stalled.read()
            assert isinstance(hello, dict)
            stalled_id = hello["clientId"]
            stalled.read()  # snapshot
            async with (
                httpx.AsyncClient(base_url=server.http, timeout=PATIENCE) as http,
                await WsClient.open(server.ws) as healthy,
            ):
                await healthy.next()
                flood = [
                    (await start_task(http, f"flood of {REPORTS} #{n}", 1000, **{"X-Client-Id": stalled_id})).json()[
                        "id"
                    ]
                    for n in range(TASKS)
                ]
                mine = (await start_task(http, "healthy", 2000, **{"X-Client-Id": healthy.client_id})).json()
                await healthy.until(
                    lambda m: m.get("task", {}).get("id") == mine["id"] and m["task"]["status"] == "completed"
                )
                with anyio.fail_after(PATIENCE):
                    while (await http.get("/api/task/status")).json()["queue"]["running"]:
                        await anyio.sleep(0.05)
                assert_gapless(healthy.received[1:], after=0)

            # Now the stalled client reads what the server kept for it.
            seen: list[dict[str, Any]] = []
            closed_with: int | None = None
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline:
                message = await anyio.to_thread.run_sync(stalled.read)  # each read ends within PATIENCE
                if isinstance(message, int):
                    closed_with = message
                    break
                seen.append(message)
                if {m["task"]["id"] for m in seen if m["task"]["status"] == "completed"} == set(flood):
                    break
            else:
                raise AssertionError(
                    f"the stalled client got neither its tasks' ends nor a close: {len(seen)} messages"
                )
        finally:
            stalled.close()

    seqs = [m["seq"] for m in seen]
    assert seqs == sorted(set(seqs)), "never a duplicate, never out of order"
    if closed_with is not None:
        assert closed_with == CLOSE_SLOW_CONSUMER
    else:
        # Served merged: every task's every status arrived, progress only got coarser.
        for task_id in flood:
            statuses = [m["task"]["status"] for m in seen if m["task"]["id"] == task_id]
            assert statuses[-1] == "completed"
            assert "running" in statuses
        assert len(seen) < TASKS * REPORTS, "progress was merged, not all sent"
