"""Bad input on every route and on the socket: a documented answer, never a 500 or a dead handler."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from progressq.identity import IdentityAuthority
from progressq.transport import TransportSettings
from tests.apps import RunningServer
from tests.integration.client import WsClient, start_task
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

FOREIGN = IdentityAuthority("another-apps-secret-0123456789").mint()


def tampered(server: RunningServer) -> str:
    good = server.hub.identities.mint()
    return good[:-1] + ("A" if good[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b'{"name": "x", "duration": 1000', 400, "malformed_json", None),
        (b"not json at all", 400, "malformed_json", None),
        (b"", 400, "malformed_json", None),
        (b"[]", 422, "invalid_field", None),
        (b'{"name": 5, "duration": 1000}', 422, "invalid_field", "name"),
        (b'{"name": "x", "duration": "1000"}', 422, "invalid_field", "duration"),
        (b'{"name": "x", "duration": true}', 422, "invalid_field", "duration"),
        (b'{"name": "x", "duration": 1000.5}', 422, "invalid_field", "duration"),
        (b'{"name": "x", "duration": 999}', 422, "invalid_field", "duration"),
        (b'{"name": "x", "duration": 30001}', 422, "invalid_field", "duration"),
        (b'{"name": "x"}', 422, "invalid_field", "duration"),
        (b'{"duration": 1000}', 422, "invalid_field", "name"),
        (b'{"name": "   ", "duration": 1000}', 422, "invalid_field", "name"),
        (b'{"name": "' + b"n" * 201 + b'", "duration": 1000}', 422, "invalid_field", "name"),
        (b'{"name": "x", "duration": 1000, "extra": 1}', 422, "invalid_field", "extra"),
        (b'{"name": "x", "duration": 1000, "clientId": 7}', 422, "invalid_field", "clientId"),
    ],
)
async def test_start_refuses_bad_bodies(
    http: httpx.AsyncClient, body: bytes, status: int, code: str, field: str | None
) -> None:
    response = await http.post("/api/task/start", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error.get("field") == field


async def test_name_is_trimmed_and_200_characters_are_fine(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/task/start", json={"name": "  " + "n" * 200 + "  ", "duration": 30000})
    assert response.status_code == 202
    assert response.json()["name"] == "n" * 200


async def test_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    big = {"name": "x", "duration": 1000, "pad": "p" * 70_000}
    response = await http.post("/api/task/start", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"

    async def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        for _ in range(100):
            yield b"x" * 1024

    streamed = await http.post("/api/task/start", content=chunks())
    assert streamed.status_code == 413


@pytest.mark.parametrize("which", ["random", "tampered", "foreign"])
async def test_forged_ids_are_403_on_every_route(server: RunningServer, http: httpx.AsyncClient, which: str) -> None:
    forged = {"random": "made-up-id", "tampered": tampered(server), "foreign": FOREIGN}[which]
    calls = [
        http.post("/api/task/start", json={"name": "x", "duration": 1000, "clientId": forged}),
        http.post("/api/task/start", json={"name": "x", "duration": 1000}, headers={"X-Socket-Id": forged}),
        http.post("/api/task/start", json={"name": "x", "duration": 1000}, headers={"X-Session-Id": forged}),
        http.get("/api/tasks", headers={"X-Client-Id": forged}),
        http.get("/api/task/anything", headers={"X-Client-Id": forged}),
        http.post("/api/task/anything/cancel", headers={"X-Client-Id": forged}),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden_identity"
    # Nothing was queued (asked over HTTP: the hub lives on the server's event loop).
    assert (await http.get("/api/task/status")).json()["queue"] == {"queued": 0, "running": 0}


async def test_forged_resume_closes_1008(server: RunningServer) -> None:
    for forged in ("made-up-id", tampered(server), FOREIGN, "x" * 257, server.hub.identities.mint() + "x" * 300):
        async with await WsClient.open(server.ws) as ws:
            await ws.next()
            assert await ws.close_code({"type": "resume", "clientId": forged, "lastSeq": 0}) == 1008


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "{}",
        '{"type": "teleport"}',
        '{"type": "cancel"}',
        '{"type": "cancel", "taskId": 5}',
        '{"type": "resume", "clientId": 5}',
        '{"type": "resume", "clientId": "x", "lastSeq": -1}',
        "[1, 2, 3]",
        "null",
        b"\x00\xff binary",
        "[" * 1000 + "]" * 1000,
        '{"type": "ping", "x": ' + "[" * 1000 + "]" * 1000 + "}",  # about 2 KB, depth 1000
        '{"a": ' * 1000 + "1" + "}" * 1000,
        '{"type": "resume", "clientId": "x", "lastSeq": 1, "token": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays(
    server: RunningServer, frame: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        await ws.connection.send(frame)
        error = await ws.next()
        assert error["type"] == "error"
        assert error["code"] == "invalid_message"
        assert "Traceback" not in error["message"]
        await ws.send("ping")
        assert (await ws.next())["type"] == "pong"
    assert not [record for record in caplog.records if record.exc_info], "a bad frame logged a traceback"


async def test_oversized_frame_closes_1009(server: RunningServer) -> None:
    async with await WsClient.open(server.ws) as ws:
        await ws.next()
        assert await ws.close_code({"type": "ping", "pad": "p" * 70_000}) == 1009


async def test_message_flood_closes_1008_and_others_are_served(make_server: Any) -> None:
    with make_server(TransportSettings(messages_per_second=5, message_burst=10)) as server:
        async with await WsClient.open(server.ws) as flooder, await WsClient.open(server.ws) as calm:
            await flooder.next()
            await calm.next()
            assert await flooder.close_code("ping", repeat=100) == 1008
            await calm.send("ping")
            assert (await calm.next())["type"] == "pong"


async def test_foreign_origin_handshake_is_refused(make_server: Any) -> None:
    allowed = "https://app.example"
    with make_server(TransportSettings(allowed_origins=(allowed,))) as server:
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(server.ws, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        # The allow-listed origin, the server's own origin, and non-browser clients (no Origin).
        for origin in (allowed, f"http://127.0.0.1:{server.port}", None):
            async with await WsClient.open(server.ws, origin=origin) as ws:
                assert (await ws.next())["type"] == "snapshot"


async def test_full_queue_answers_503_with_retry_after(make_server: Any) -> None:
    from progressq import MemoryBackend

    with make_server(backend=MemoryBackend(capacity=2), concurrency=0) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            codes = [
                (await http.post("/api/task/start", json={"name": "x", "duration": 1000})).status_code for _ in range(3)
            ]
            full = await http.post("/api/task/start", json={"name": "x", "duration": 1000})
    assert codes == [202, 202, 503]
    assert full.status_code == 503
    assert full.json()["error"]["code"] == "queue_full"
    assert full.headers["retry-after"] == "1"


async def test_with_public_origins_the_host_header_is_not_the_reference(make_server: Any) -> None:
    public = "https://app.example"
    with make_server() as server:  # none configured: a page whose origin matches Host passes (DNS rebinding)
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            rebound = {"Host": f"rebound.example:{server.port}", "Origin": f"http://rebound.example:{server.port}"}
            assert (await start_task(http, "rebound", 1000, **rebound)).status_code == 202
    with make_server(TransportSettings(public_origins=(public,))) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            rebound = {"Host": f"rebound.example:{server.port}", "Origin": f"http://rebound.example:{server.port}"}
            refused = await start_task(http, "rebound", 1000, **rebound)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "origin_not_allowed"
            assert (await http.get("/api/events", headers=rebound)).status_code == 403
            assert (await start_task(http, "ours", 1000, Origin=public)).status_code == 202
            assert (await start_task(http, "not a browser", 1000)).status_code == 202
        with pytest.raises(InvalidStatus) as handshake:
            await WsClient.open(server.ws, origin=f"http://127.0.0.1:{server.port}")  # matches Host, not public
        assert handshake.value.response.status_code == 403
        async with await WsClient.open(server.ws, origin=public) as ws:
            assert (await ws.next())["type"] == "snapshot"
