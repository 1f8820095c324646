"""Limits and guards on a real server: each breach gets its documented answer, is logged once,
and never stops the server serving everyone else; errors never reveal internals."""

from __future__ import annotations

import logging
import re
import sys
import types
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from progressq.transport import TransportSettings
from tests.apps import make_hub, serve
from tests.integration.client import WsClient, start_kind, start_task
from tests.integration.security_support import progressq_log
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

CALM = {"messages_per_second": 1000.0, "message_burst": 1000}


def logged(records: list[logging.LogRecord], text: str) -> int:
    return sum(1 for record in records if text in record.getMessage())


async def close_code(ws: WsClient) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.next()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def resume(ws: WsClient, client_id: str) -> dict[str, Any]:
    await ws.send({"type": "resume", "clientId": client_id})
    return (await ws.until(lambda m: m["type"] == "connection"))[-1]


async def test_more_connections_of_one_identity_are_refused(make_server: Any) -> None:
    with progressq_log() as records, make_server(TransportSettings(max_connections_per_identity=2, **CALM)) as server:
        async with await WsClient.open(server.ws) as first, await WsClient.open(server.ws) as second:
            identity = first.client_id
            assert (await resume(second, identity))["clientId"] == identity
            for _ in range(3):  # a third connection of the identity, again and again
                async with await WsClient.open(server.ws) as third:
                    await third.next()
                    await third.send({"type": "resume", "clientId": identity})
                    assert await close_code(third) == 1008
            # the identity's own connections and everyone else are still served
            await first.send("ping")
            assert (await first.until(lambda m: m["type"] == "pong"))[-1]["type"] == "pong"
            async with await WsClient.open(server.ws) as stranger:
                assert (await stranger.next())["type"] == "snapshot"
            async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
                refused = await http.get("/api/events", params={"clientId": identity})
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "too_many_connections"
                assert refused.headers["retry-after"]
            await second.close()
            with anyio.fail_after(PATIENCE):  # the closed connection's place is freed
                while True:
                    async with await WsClient.open(server.ws) as again:
                        await again.next()
                        await again.send({"type": "resume", "clientId": identity})
                        try:
                            if (await again.until(lambda m: m["type"] == "connection"))[-1]["clientId"] == identity:
                                break
                        except ConnectionClosed:
                            await anyio.sleep(0.05)
    assert logged(records, "refused a connection") == 1  # four refusals, one line


async def test_message_flood_and_big_frames_are_closed_and_logged_once(
    make_server: Any,
) -> None:
    with (
        progressq_log() as records,
        make_server(TransportSettings(messages_per_second=5, message_burst=10, max_frame_bytes=1024)) as server,
    ):
        async with await WsClient.open(server.ws) as calm:
            await calm.next()
            async with await WsClient.open(server.ws) as flooder:
                await flooder.next()
                assert await flooder.close_code("ping", repeat=200) == 1008
            async with await WsClient.open(server.ws) as big:
                await big.next()
                assert await big.close_code("x" * 2000, repeat=20) == 1009
            await calm.send("ping")
            assert (await calm.next())["type"] == "pong"
    assert logged(records, "message rate exceeded") == 1
    assert logged(records, "-byte frame") == 1


async def test_unfinished_tasks_per_identity_are_limited(make_server: Any) -> None:
    with progressq_log() as records, make_server(max_active_per_owner=2, concurrency=0) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            first = (await start_task(http)).json()
            owner = {"X-Client-Id": first["clientId"]}
            assert (await start_task(http, **owner)).status_code == 202
            for _ in range(3):
                refused = await start_task(http, **owner)
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "too_many_tasks"
                assert int(refused.headers["retry-after"]) >= 1
            assert (await start_task(http)).status_code == 202  # another identity is served
            assert len((await http.get("/api/tasks", headers=owner)).json()["tasks"]) == 2
            assert (await http.post(f"/api/task/{first['id']}/cancel", headers=owner)).status_code == 200
            assert (await start_task(http, **owner)).status_code == 202  # a finished task frees a place
    assert logged(records, "refused a task") == 1


async def test_state_changing_routes_check_the_origin(make_server: Any) -> None:
    with make_server(TransportSettings(allowed_origins=("https://app.example",))) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            mine = (await start_task(http)).json()
            owner = {"X-Client-Id": mine["clientId"]}
            for origin in ("https://evil.example", "null", "http://127.0.0.1"):
                evil = {"Origin": origin, **owner}
                refused = await start_task(http, **evil)
                assert (refused.status_code, refused.json()["error"]["code"]) == (403, "origin_not_allowed")
                refused = await http.post(f"/api/task/{mine['id']}/cancel", headers=evil)
                assert (refused.status_code, refused.json()["error"]["code"]) == (403, "origin_not_allowed")
            assert len((await http.get("/api/tasks", headers=owner)).json()["tasks"]) == 1
            # allowed: the listed origin, the server's own, and no Origin at all (not a browser)
            for origin in ("https://app.example", f"http://127.0.0.1:{server.port}", None):
                headers = owner if origin is None else {"Origin": origin, **owner}
                assert (await start_task(http, **headers)).status_code == 202
            with pytest.raises(InvalidStatus) as refused_ws:
                await WsClient.open(server.ws, origin="null")  # type: ignore[arg-type]
            assert refused_ws.value.response.status_code == 403


@pytest.mark.parametrize("origins", [("*",), ()])
async def test_any_origin_is_warned_about_at_startup(make_server: Any, origins: tuple[str, ...]) -> None:
    with progressq_log(logging.WARNING) as records, make_server(TransportSettings(allowed_origins=origins)) as server:
        pass
    assert logged(records, "allowed_origins contains '*'") == (1 if origins else 0)
    del server


async def test_internal_errors_reveal_nothing_even_in_debug_mode(
    framework: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend failing in an unexpected way: the client learns only that it failed."""
    secret_detail = "redis://admin:hunter2@10.0.0.7:6379/0 went away"
    hub = make_hub()
    if framework == "starlette":
        from progressq.starlette import create_app
    else:
        from progressq.litestar import create_app  # type: ignore[no-redef]
    app = create_app(hub, TransportSettings(), debug=True)

    async def broken(owner: str, limit: int | None = None) -> Any:
        raise RuntimeError(secret_detail)

    with progressq_log(logging.ERROR) as records, serve(app, hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            owner = {"X-Client-Id": (await start_kind(http, "demo", {"duration": 1000})).json()["clientId"]}
            monkeypatch.setattr(hub.queue, "list_by_owner", broken)
            listed = await http.get("/api/tasks", headers=owner)
            assert listed.status_code == 500
            assert listed.json() == {
                "error": {"code": "internal_error", "message": "the server could not handle this request"}
            }
            async with http.stream("GET", "/api/events", headers=owner) as stream:
                body = (await stream.aread()).decode()
            assert "hunter2" not in body
            assert "Traceback" not in body
        async with await WsClient.open(server.ws) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.next()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "internal error")
            assert all("hunter2" not in str(message) for message in ws.received)
    assert any(secret_detail in str(record.exc_info and record.exc_info[1]) for record in records)  # in the log


def load_page(name: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A how-to page's ``python`` blocks, in order, as one module."""
    page = Path(__file__).resolve().parents[2] / "docs" / "how-to" / name
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    monkeypatch.setenv("PROGRESSQ_SECRET", "docs-test-secret-0123456789abcdef")
    module = types.ModuleType("docs_" + name.removesuffix(".md"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile("\n".join(blocks), str(page), "exec"), module.__dict__)
    return module


async def test_the_security_how_to_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_page("security.md", monkeypatch)
    with serve(module.app, module.hub) as server:
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(server.ws, origin="https://elsewhere.example")
        assert refused.value.response.status_code == 403
        async with await WsClient.open(server.ws, origin="https://app.example") as ws:
            assert (await ws.next())["type"] == "snapshot"
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            evil = {"X-Client-Id": ws.client_id, "Origin": "https://elsewhere.example"}
            assert (await start_kind(http, "export", **evil)).status_code == 403
            assert (await start_kind(http, "export", **{"X-Client-Id": ws.client_id})).status_code == 202
    assert (module.hub.max_active_per_owner, module.settings.max_connections_per_identity) == (20, 8)


async def test_a_snapshot_carries_at_most_snapshot_size_tasks_the_newest(make_server: Any) -> None:
    # A resume answered with a snapshot costs a bounded amount, however many tasks the
    # identity keeps (a thousand finished ones, kept for a day, made each ~420 KiB).
    with make_server(TransportSettings(snapshot_size=5)) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
            owner = server.hub.identities.mint()
            names = [f"task {n}" for n in range(7)]
            for name in names:
                assert (await start_task(http, name, 1000, **{"X-Client-Id": owner})).status_code == 202
            async with await WsClient.open(server.ws) as ws:
                await ws.next()
                await ws.send({"type": "resume", "clientId": owner})
                assert (await ws.next())["type"] == "connection"
                snapshot = await ws.next()
                assert snapshot["type"] == "snapshot"
                assert [t["name"] for t in snapshot["tasks"]] == names[::-1][:5]
                assert snapshot["complete"] is False
                # All of them are still listed over HTTP.
                listed = (await http.get("/api/tasks", headers={"X-Client-Id": owner})).json()["tasks"]
                assert len(listed) == 7
            async with await WsClient.open(server.ws) as few:  # a fresh identity: complete, nothing to add
                snapshot = await few.next()
                assert snapshot["tasks"] == []
                assert snapshot.get("complete", True) is True
