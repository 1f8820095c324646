"""Redis loses its data (restarted without persistence) while a client stays connected:
the client is told to resync (a fresh snapshot, ``recovered: false``) and then receives
every event of the new history. Never silence."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from progressq.backends.redis import RedisBackend
from progressq.transport import TransportSettings
from tests.apps import build_app, make_hub, serve
from tests.integration.client import WsClient, start_task, terminal
from tests.integration.test_redis_outage import wait_for_health
from tests.redis_support import private_redis

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_a_connected_client_resyncs_after_redis_lost_its_data() -> None:
    with private_redis() as redis_server:  # no persistence: a restart loses everything
        backend = RedisBackend.from_url(redis_server.url, prefix="loss", lease_timeout=1.0)
        hub = make_hub(backend=backend)
        with serve(build_app("starlette", hub, TransportSettings()), hub) as server:
            async with (
                httpx.AsyncClient(base_url=server.http, timeout=30) as http,
                await WsClient.open(server.ws) as ws,
            ):
                assert (await ws.next())["type"] == "snapshot"
                before = []
                for n in range(3):  # the identity's seq climbs well above 1
                    task = (await start_task(http, f"before {n}", 1000, **{"X-Client-Id": ws.client_id})).json()
                    before.append(await ws.until(terminal(task["id"]), timeout=30))
                last_seq = before[-1][-1]["seq"]
                assert last_seq > 3

                redis_server.stop()
                redis_server.start()  # same port, empty
                await wait_for_health(http, 200)

                after = (await start_task(http, "after the loss", 1000, **{"X-Client-Id": ws.client_id})).json()

                # The task's events arrive after the resync snapshot, or (when the task ended
                # before this process noticed the loss) the snapshot itself shows it finished.
                def caught_up(message: dict[str, Any]) -> bool:
                    if message["type"] == "snapshot":
                        return any(t["id"] == after["id"] and t["status"] == "completed" for t in message["tasks"])
                    return terminal(after["id"])(message)

                seen = await ws.until(caught_up)
                snapshots = [m for m in seen if m["type"] == "snapshot"]
                assert snapshots, f"no resync snapshot after the data loss: {seen}"
                assert snapshots[0]["recovered"] is False
                # From the snapshot on, seq runs on by exactly 1 and nothing of the new task is missed.
                tail = seen[seen.index(snapshots[-1]) :]
                seqs = [m["seq"] for m in tail]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
                last = tail[-1]
                final = (
                    last["task"]
                    if last["type"] != "snapshot"
                    else next(t for t in last["tasks"] if t["id"] == after["id"])
                )
                assert final["status"] == "completed"

                # And the next task's events arrive live, numbered on from there.
                more = (await start_task(http, "later", 1000, **{"X-Client-Id": ws.client_id})).json()
                later = await ws.until(terminal(more["id"]), timeout=30)
                assert next(m["seq"] for m in later if "seq" in m) == seqs[-1] + 1
