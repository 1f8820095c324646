"""The seed's scenarios against a real server: lifecycle, concurrency, isolation, identity."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from tests.apps import RunningServer
from tests.integration.client import Message, WsClient, start_task, terminal
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio


def task_events(messages: list[Message], task_id: str | None = None) -> list[Message]:
    return [m for m in messages if m["type"] in {"taskQueued", "taskProgress"} and task_id in (None, m["task"]["id"])]


def assert_gapless(messages: list[Message], after: int) -> None:
    seqs = [m["seq"] for m in task_events(messages)]
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), seqs


def assert_progress_never_decreases(messages: list[Message]) -> None:
    last: dict[tuple[str, int], float] = {}
    for message in task_events(messages):
        task = message["task"]
        key = (task["id"], task["attempt"])
        assert task["progress"] >= last.get(key, 0.0), message
        last[key] = task["progress"]


async def test_single_task_runs_to_completed(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with await WsClient.open(server.ws) as ws:
        snapshot = await ws.next()
        assert snapshot == {"type": "snapshot", "tasks": [], "seq": 0, "recovered": False}
        response = await start_task(http, "resize photos", 1000, **{"X-Socket-Id": ws.socket_id})
        assert response.status_code == 202
        started = response.json()
        assert started["clientId"] == ws.client_id
        assert started["status"] == "queued"
        assert started["name"] == "resize photos"
        messages = await ws.until(terminal(started["id"]))

    assert messages[0]["type"] == "taskQueued"
    assert messages[0]["task"]["id"] == started["id"]
    assert {m["type"] for m in messages[1:]} == {"taskProgress"}
    final = messages[-1]["task"]
    assert final["status"] == "completed"
    assert final["progress"] == 100
    assert final["result"] == {"steps": 10}
    assert final["startedAt"] is not None
    assert final["finishedAt"] is not None
    assert final["attempt"] == 1
    statuses = [m["task"]["status"] for m in messages]
    assert statuses.index("running") < statuses.index("completed")
    assert_gapless(messages, after=0)
    assert_progress_never_decreases(messages)


async def test_concurrent_tasks_all_complete_in_order(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        ids = []
        for n in range(6):
            response = await start_task(http, f"job {n}", 1000 + 500 * n, **{"X-Client-Id": ws.client_id})
            ids.append(response.json()["id"])
        done: set[str] = set()
        with anyio.fail_after(PATIENCE):
            while done != set(ids):
                message = await ws.next()
                if message.get("task", {}).get("status") == "completed":
                    done.add(message["task"]["id"])
    assert_gapless(ws.received[1:], after=0)
    assert_progress_never_decreases(ws.received)


async def test_clients_only_ever_see_their_own_tasks(server: RunningServer, http: httpx.AsyncClient) -> None:
    clients = [await WsClient.open(server.ws) for _ in range(3)]
    try:
        owned: dict[str, set[str]] = {}
        for ws in clients:
            await ws.next()
            owned[ws.client_id] = set()
            for n in range(2):
                response = await start_task(http, f"{ws.client_id[:4]}-{n}", 1000, **{"X-Socket-Id": ws.socket_id})
                owned[ws.client_id].add(response.json()["id"])
        for ws in clients:
            mine = owned[ws.client_id]
            finished: set[str] = set()
            with anyio.fail_after(PATIENCE):
                while finished != mine:
                    message = await ws.next()
                    finished |= (
                        {message["task"]["id"]} if terminal(message.get("task", {}).get("id", ""))(message) else set()
                    )
            seen = {m["task"]["id"] for m in task_events(ws.received)}
            assert seen == mine
            listed = (await http.get("/api/tasks", headers={"X-Client-Id": ws.client_id})).json()
            assert {t["id"] for t in listed["tasks"]} == mine
            for other, theirs in owned.items():
                if other != ws.client_id:
                    for task_id in theirs:
                        got = await http.get(f"/api/task/{task_id}", headers={"X-Client-Id": ws.client_id})
                        assert got.status_code == 404
    finally:
        for ws in clients:
            await ws.close()


@pytest.mark.parametrize("method", ["body", "X-Socket-Id", "X-Session-Id", "X-Client-Id"])
async def test_each_identification_method_names_the_owner(
    server: RunningServer, http: httpx.AsyncClient, method: str
) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        if method == "body":
            response = await http.post(
                "/api/task/start", json={"name": "via body", "duration": 1000, "clientId": ws.client_id}
            )
        else:
            response = await start_task(http, f"via {method}", 1000, **{method: ws.client_id})
        assert response.status_code == 202
        assert response.json()["clientId"] == ws.client_id
        queued = await ws.next()
        assert queued["type"] == "taskQueued"
        assert queued["task"]["id"] == response.json()["id"]


async def test_identification_priority_follows_the_seed(server: RunningServer, http: httpx.AsyncClient) -> None:
    ids = [server.hub.identities.mint() for _ in range(4)]
    headers = {"X-Socket-Id": ids[1], "X-Session-Id": ids[2], "X-Client-Id": ids[3]}
    body = {"name": "p", "duration": 1000}
    expectations: list[tuple[dict[str, Any], dict[str, str], str]] = [
        ({**body, "clientId": ids[0]}, headers, ids[0]),
        (body, headers, ids[1]),
        (body, {"X-Session-Id": ids[2], "X-Client-Id": ids[3]}, ids[2]),
        (body, {"X-Client-Id": ids[3]}, ids[3]),
    ]
    for payload, sent_headers, owner in expectations:
        response = await http.post("/api/task/start", json=payload, headers=sent_headers)
        assert response.json()["clientId"] == owner


async def test_without_identification_a_new_identity_is_minted(server: RunningServer, http: httpx.AsyncClient) -> None:
    first = (await start_task(http, "anonymous")).json()
    second = (await start_task(http, "anonymous")).json()
    assert first["clientId"] != second["clientId"]
    assert server.hub.identities.verify(first["clientId"])
    listed = (await http.get("/api/tasks", headers={"X-Client-Id": first["clientId"]})).json()
    assert [t["id"] for t in listed["tasks"]] == [first["id"]]


async def test_failing_task_reports_a_readable_error(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        started = (await start_task(http, "please fail", 2000, **{"X-Client-Id": ws.client_id})).json()
        messages = await ws.until(terminal(started["id"]))
    final = messages[-1]["task"]
    assert final["status"] == "failed"
    assert final["error"] == "RuntimeError: please fail failed on purpose"
    assert 0 < final["progress"] < 100
    assert "Traceback" not in final["error"]
    # The worker survived: the next task still runs.
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        again = (await start_task(http, "fine", 1000, **{"X-Client-Id": ws.client_id})).json()
        assert (await ws.until(terminal(again["id"])))[-1]["task"]["status"] == "completed"


async def test_tasks_list_newest_first_and_get_one(server: RunningServer, http: httpx.AsyncClient) -> None:
    owner = server.hub.identities.mint()
    ids = [(await start_task(http, f"t{n}", 1000, **{"X-Client-Id": owner})).json()["id"] for n in range(3)]
    listed = (await http.get("/api/tasks", headers={"X-Client-Id": owner})).json()
    assert [t["id"] for t in listed["tasks"]] == ids[::-1]
    one = await http.get(f"/api/task/{ids[0]}", headers={"X-Client-Id": owner})
    assert one.status_code == 200
    assert one.json()["id"] == ids[0]
    assert (await http.get("/api/task/no-such-task", headers={"X-Client-Id": owner})).status_code == 404
    assert (await http.get(f"/api/task/{ids[0]}")).status_code == 404  # no identity given


async def test_service_routes(server: RunningServer, http: httpx.AsyncClient) -> None:
    index = (await http.get("/")).json()
    assert index["name"] == "progressq"
    assert {"GET /health", "POST /api/task/start", "WS /ws"} <= {
        f"{e['method']} {e['path']}" for e in index["endpoints"]
    }
    # The backend's health check has its own deadline (on Redis Cluster 1.5 s a master), which a
    # machine under load can overrun once: the service is healthy when a check says so in time.
    with anyio.fail_after(PATIENCE):
        while (health := await http.get("/health")).status_code != 200:
            assert health.json()["status"] == "unhealthy"
            await anyio.sleep(0.2)
    assert health.json()["status"] == "healthy"
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        status = (await http.get("/api/task/status")).json()
        assert status["connections"] == 1
        assert status["clients"] == 1
        assert set(status["queue"]) >= {"queued", "running"}
