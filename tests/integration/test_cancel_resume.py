"""Cancellation, reconnect/resume and snapshots against a real server."""

from __future__ import annotations

import httpx
import pytest

from tests.apps import RunningServer
from tests.integration.client import WsClient, start_task, terminal
from tests.integration.test_tasks import assert_gapless, task_events
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio


async def test_cancel_own_running_task(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        started = (await start_task(http, "block until cancelled", 1000, **{"X-Client-Id": ws.client_id})).json()
        await ws.until(lambda m: m.get("task", {}).get("status") == "running")
        response = await http.post(f"/api/task/{started['id']}/cancel", headers={"X-Client-Id": ws.client_id})
        assert response.status_code in {200, 202}
        final = (await ws.until(terminal(started["id"])))[-1]["task"]
        assert final["status"] == "cancelled"
        again = await http.post(f"/api/task/{started['id']}/cancel", headers={"X-Client-Id": ws.client_id})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "already_finished"


async def test_cancel_over_the_websocket(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        started = (await start_task(http, "block", 1000, **{"X-Client-Id": ws.client_id})).json()
        await ws.until(lambda m: m.get("task", {}).get("status") == "running")
        await ws.send({"type": "cancel", "taskId": started["id"]})
        assert (await ws.until(terminal(started["id"])))[-1]["task"]["status"] == "cancelled"
        await ws.send({"type": "cancel", "taskId": "not-a-task"})
        error = await ws.next()
        assert (error["type"], error["code"]) == ("error", "not_found")


async def test_cancel_someone_elses_task_is_not_found(server: RunningServer, http: httpx.AsyncClient) -> None:
    owner, intruder = server.hub.identities.mint(), server.hub.identities.mint()
    started = (await start_task(http, "block", 1000, **{"X-Client-Id": owner})).json()
    response = await http.post(f"/api/task/{started['id']}/cancel", headers={"X-Client-Id": intruder})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    # Over the socket too: same answer as for a task that does not exist (no oracle).
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        await ws.send({"type": "cancel", "taskId": started["id"]})
        assert (await ws.next())["code"] == "not_found"
    mine = await http.get(f"/api/task/{started['id']}", headers={"X-Client-Id": owner})
    assert mine.json()["status"] in {"queued", "running"}
    await http.post(f"/api/task/{started['id']}/cancel", headers={"X-Client-Id": owner})


async def test_cancel_queued_task_never_starts(make_server: object, framework: str) -> None:
    with make_server(concurrency=1) as server:  # type: ignore[operator]
        async with (
            httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http,
            await WsClient.open(server.ws) as ws,
        ):
            await ws.next()
            blocker = (await start_task(http, "block", 1000, **{"X-Client-Id": ws.client_id})).json()
            waiting = (await start_task(http, "waits", 1000, **{"X-Client-Id": ws.client_id})).json()
            response = await http.post(f"/api/task/{waiting['id']}/cancel", headers={"X-Client-Id": ws.client_id})
            assert response.status_code == 200
            assert response.json()["status"] == "cancelled"
            await http.post(f"/api/task/{blocker['id']}/cancel", headers={"X-Client-Id": ws.client_id})
            await ws.until(terminal(blocker["id"]))
            statuses = [m["task"]["status"] for m in task_events(ws.received, waiting["id"])]
            assert "running" not in statuses
            assert statuses[-1] == "cancelled"


async def test_resume_replays_exactly_what_was_missed(server: RunningServer, http: httpx.AsyncClient) -> None:
    ws = await WsClient.open(server.ws)
    await ws.next()
    client_id = ws.client_id
    started = (await start_task(http, "long", 10000, **{"X-Client-Id": client_id})).json()
    seen = await ws.until(lambda m: m.get("task", {}).get("progress", 0) >= 20)
    last_seq = seen[-1]["seq"]
    await ws.close()

    async with await WsClient.open(server.ws) as again:
        assert again.client_id != client_id  # a fresh connection is a fresh identity until resumed
        await again.next()  # its own (empty) snapshot
        await again.send({"type": "resume", "clientId": client_id, "lastSeq": last_seq})
        answer = await again.next()
        assert answer["type"] == "connection"
        assert answer["clientId"] == client_id
        assert answer["socketId"] == again.socket_id
        assert answer["recovered"] is True
        rest = await again.until(terminal(started["id"]))
    assert all(m["type"] != "snapshot" for m in rest)
    assert_gapless(rest, after=last_seq)
    assert rest[-1]["task"]["status"] == "completed"


async def test_new_connection_snapshot_shows_tasks_in_flight(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        started = (await start_task(http, "in flight", 10000, **{"X-Client-Id": ws.client_id})).json()
        await ws.until(lambda m: m.get("task", {}).get("progress", 0) >= 10)
        # A page refresh: a new socket that takes the identity back without lastSeq.
        async with await WsClient.open(server.ws) as tab:
            await tab.next()
            await tab.send({"type": "resume", "clientId": ws.client_id})
            assert (await tab.next())["recovered"] is False
            snapshot = await tab.next()
            assert snapshot["type"] == "snapshot"
            assert snapshot["recovered"] is False
            [task] = snapshot["tasks"]
            assert task["id"] == started["id"]
            assert task["status"] == "running"
            assert task["progress"] >= 10
            later = await tab.until(terminal(started["id"]))
            assert_gapless(later, after=snapshot["seq"])
            progress = [task["progress"]] + [m["task"]["progress"] for m in task_events(later)]
            assert progress == sorted(progress)


async def test_resume_beyond_history_falls_back_to_a_snapshot(make_server: object) -> None:
    # Far more events than the history keeps (a history keeps "about" history_size: at most
    # 100 more), and few enough that a busy PostgreSQL writes them well within the task's timeout.
    with make_server(history_size=3, progress_interval=0) as server:  # type: ignore[operator]
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            ws = await WsClient.open(server.ws)
            await ws.next()
            started = (await start_task(http, "flood of 400 events", 1000, **{"X-Client-Id": ws.client_id})).json()
            await ws.until(terminal(started["id"]), timeout=PATIENCE)
            await ws.close()
            async with await WsClient.open(server.ws) as again:
                await again.next()
                await again.send({"type": "resume", "clientId": ws.client_id, "lastSeq": 1})
                assert (await again.next())["recovered"] is False
                snapshot = await again.next()
                assert snapshot["type"] == "snapshot"
                assert [t["status"] for t in snapshot["tasks"]] == ["completed"]
                assert snapshot["seq"] == ws.received[-1]["seq"]


async def test_every_connection_of_an_identity_gets_the_same_events(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with await WsClient.open(server.ws) as first, await WsClient.open(server.ws) as second:
        await first.next()
        await second.next()
        await second.send({"type": "resume", "clientId": first.client_id, "lastSeq": 0})
        assert (await second.next())["recovered"] is True
        started = (await start_task(http, "shared", 1000, **{"X-Client-Id": first.client_id})).json()
        a = await first.until(terminal(started["id"]))
        b = await second.until(terminal(started["id"]))
    assert a == b


async def test_ping_pong(server: RunningServer) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        await ws.send("ping")
        assert (await ws.next())["type"] == "pong"
        await ws.send({"type": "ping"})
        pong = await ws.next()
        assert pong["type"] == "pong"
        assert pong["serverTime"].endswith("Z")
