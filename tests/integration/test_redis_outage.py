"""A web app on Redis while Redis goes away and comes back: clear answers, never a 500,
and it recovers by itself; tasks acknowledged before the outage still finish."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from progressq.transport import TransportSettings
from tests.apps import build_app, make_hub, serve
from tests.integration.client import WsClient, start_task, terminal
from tests.redis_support import private_redis
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

RedisBackend = pytest.importorskip(
    "progressq.backends.redis", reason='needs pip install "progressq[redis]"'
).RedisBackend


async def wait_for_health(http: httpx.AsyncClient, status: int, within: float = PATIENCE) -> None:
    with anyio.fail_after(within):
        while (await http.get("/health")).status_code != status:
            await anyio.sleep(0.1)


async def test_health_and_answers_follow_redis_and_nothing_acknowledged_is_lost(framework: str, tmp_path: Path) -> None:
    with private_redis(data_dir=tmp_path) as redis_server:
        backend = RedisBackend.from_url(redis_server.url, prefix="outage", lease_timeout=1.0)
        hub = make_hub(backend=backend)
        with serve(build_app(framework, hub, TransportSettings()), hub) as server:
            async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
                assert (await http.get("/health")).status_code == 200
                async with await WsClient.open(server.ws) as ws:
                    await ws.next()
                    acknowledged = (await start_task(http, "survivor", 20000, **{"X-Client-Id": ws.client_id})).json()
                    await ws.until(lambda m: m.get("task", {}).get("status") == "running")
                client_id = ws.client_id

                redis_server.kill()
                await wait_for_health(http, 503)
                assert (await http.get("/health")).json()["status"] == "unhealthy"
                refused = await start_task(http, "during the outage", 1000, **{"X-Client-Id": client_id})
                listed = await http.get("/api/tasks", headers={"X-Client-Id": client_id})
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "backend_unavailable"
                assert "redis://" not in refused.text
                assert listed.status_code == 503

                redis_server.start()  # same port, same data
                await wait_for_health(http, 200)
                async with await WsClient.open(server.ws) as again:
                    await again.next()
                    await again.send({"type": "resume", "clientId": client_id})
                    assert (await again.next())["type"] == "connection"
                    snapshot = await again.next()
                    assert acknowledged["id"] in {t["id"] for t in snapshot["tasks"]}
                    final = (await again.until(terminal(acknowledged["id"]), timeout=PATIENCE))[-1]["task"]
                    assert final["status"] == "completed"
                    fresh = (await start_task(http, "after", 1000, **{"X-Client-Id": client_id})).json()
                    assert (await again.until(terminal(fresh["id"])))[-1]["task"]["status"] == "completed"


async def test_a_websocket_opened_while_redis_is_down_gets_an_error_and_a_close_frame() -> None:
    with private_redis() as redis_server:
        # attach_timeout far above the bound below: the answer must not wait for it.
        backend = RedisBackend.from_url(redis_server.url, prefix="down", attach_timeout=60.0)
        hub = make_hub(backend=backend)
        with serve(build_app("starlette", hub, TransportSettings()), hub) as server:
            async with (
                httpx.AsyncClient(base_url=server.http, timeout=30) as http,
                await WsClient.open(server.ws) as ws,  # subscribed before the outage
            ):
                await ws.next()
                redis_server.kill()
                await wait_for_health(http, 503)
                for _ in range(2):  # while the pub/sub connection is broken, and again
                    with anyio.fail_after(30):
                        async with connect(server.ws) as fresh:
                            received = []
                            with pytest.raises(ConnectionClosed) as closed:
                                while True:
                                    received.append(json.loads(await fresh.recv()))
                    assert closed.value.rcvd is not None, "no close frame"
                    assert closed.value.rcvd.code == 1013
                    assert [m["type"] for m in received] == ["error"]
                    assert received[0]["code"] == "backend_unavailable"
                    assert "redis" not in json.dumps(received).lower()
                # The event stream likewise: an error event, then it ends (the client retries).
                with anyio.fail_after(30):
                    async with http.stream("GET", "/api/events") as stream:
                        body = (await stream.aread()).decode()
                assert "event: error" in body
                assert '"code":"backend_unavailable"' in body
                assert "redis" not in body.lower()


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="progressq")
    with private_redis(data_dir=tmp_path) as redis_server:
        backend = RedisBackend.from_url(redis_server.url, prefix="outage-log", lease_timeout=2.0)
        hub = make_hub(backend=backend)
        with serve(build_app("starlette", hub, TransportSettings()), hub) as server:
            async with (
                httpx.AsyncClient(base_url=server.http, timeout=30) as http,
                await WsClient.open(server.ws) as ws,
            ):
                await ws.next()
                for n in range(4):  # 1.5 s each, reporting every 0.15 s: reports fail during the outage
                    await start_task(http, f"long {n}", 30000, **{"X-Client-Id": ws.client_id})
                await ws.until(lambda m: m.get("task", {}).get("status") == "running")

                caplog.clear()
                redis_server.kill()
                await wait_for_health(http, 503)
                for n in range(20):
                    refused = await start_task(http, f"refused {n}", 1000, **{"X-Client-Id": ws.client_id})
                    assert refused.status_code == 503
                await anyio.sleep(2)  # reports and heartbeats keep failing meanwhile
                redis_server.start()
                await wait_for_health(http, 200)
                with anyio.fail_after(30):  # a pooled connection from before the restart may fail once more (503)
                    while (
                        answer := await start_task(http, "after", 1000, **{"X-Client-Id": ws.client_id})
                    ).status_code == 503:
                        await anyio.sleep(0.1)
                fresh = answer.json()
                with anyio.fail_after(30):
                    while True:  # likewise
                        polled = await http.get(f"/api/task/{fresh['id']}", headers={"X-Client-Id": ws.client_id})
                        if polled.status_code == 200 and polled.json()["status"] == "completed":
                            break
                        await anyio.sleep(0.1)

    ours = [r for r in caplog.records if r.name.startswith("progressq") and r.name != "progressq.tasks"]
    assert not [r for r in ours if r.exc_info], [r.getMessage() for r in ours if r.exc_info]
    outage = [r.getMessage().split(":")[0] for r in ours if r.name == "progressq.outage"]
    # One line when it starts, one when it ends (pooled connections from before the restart
    # failing once each just after it are its tail, not new outages); nothing per failure.
    assert outage == ["backend unavailable", "backend available again"], outage
    assert len(ours) < 15, [f"{r.name}: {r.getMessage()}" for r in ours]
