"""``POST {prefix}/api/tasks/{kind}`` on every adapter: typed params, bad input answered with a
clear 4xx error body and nothing queued, ``require_identity``, route groups."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest
from websockets.exceptions import InvalidStatus

from progressq import Hub, TaskContext
from progressq.transport import RequestInfo, TransportSettings
from tests.apps import RunningServer, build_library_app, make_hub, serve
from tests.integration.client import WsClient, start_kind, terminal
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

ADAPTERS = ("starlette", "litestar", "fastapi")
PREFIX = "/pq"


class Size(msgspec.Struct, forbid_unknown_fields=True):
    width: int
    height: int


class Resize(msgspec.Struct, forbid_unknown_fields=True):
    image: str
    size: Size


def typed_hub(**options: Any) -> Hub:
    hub = make_hub(**options)

    @hub.task("resize")
    async def resize(ctx: TaskContext, params: Resize) -> dict[str, int]:
        await ctx.report(50, f"resizing {params.image}")
        return {"area": params.size.width * params.size.height}

    return hub


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(adapter: str) -> Iterator[RunningServer]:
    hub = typed_hub()
    with serve(build_library_app(adapter, hub, TransportSettings(max_body_bytes=4096), prefix=PREFIX), hub) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http + PREFIX, timeout=30) as client:
        yield client


GOOD = {"image": "a.png", "size": {"width": 3, "height": 4}}

BAD_BODIES: list[tuple[str, bytes, int, str, str | None]] = [
    ("not JSON", b"{not json", 400, "malformed_json", None),
    ("truncated", b'{"image": "a.png", "size": {', 400, "malformed_json", None),
    ("deeply nested", b"[" * 50_000 + b"]" * 50_000, 413, "body_too_large", None),
    ("deep but small", b'{"image": "a", "size": ' + b"[" * 1500 + b"]" * 1500 + b"}", 400, "malformed_json", None),
    ("deep enough", b'{"image": "a", "size": ' + b"[" * 500 + b"]" * 500 + b"}", 422, "invalid_field", "size"),
    ("wrong type", b'{"image": "a.png", "size": {"width": "wide", "height": 4}}', 422, "invalid_field", "size.width"),
    ("missing field", b'{"size": {"width": 3, "height": 4}}', 422, "invalid_field", "image"),
    ("missing nested", b'{"image": "a.png", "size": {"width": 3}}', 422, "invalid_field", "size.height"),
    ("unknown field", b'{"image": "a.png", "size": {"width": 3, "height": 4}, "x": 1}', 422, "invalid_field", "x"),
    ("not an object", b"[1, 2]", 422, "invalid_field", None),
    ("null", b"null", 422, "invalid_field", None),
    ("invalid UTF-8", b'{"image": "\xff\xfe", "size": {"width": 3, "height": 4}}', 400, "malformed_json", None),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
async def test_bad_params_get_a_clear_error_and_queue_nothing(
    server: RunningServer, http: httpx.AsyncClient, body: bytes, status: int, code: str, field: str | None
) -> None:
    owner = server.hub.identities.mint()
    answer = await http.post("/api/tasks/resize", content=body, headers={"X-Client-Id": owner})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert error.get("field") == field
    assert error["message"]
    assert (await http.get("/api/tasks", headers={"X-Client-Id": owner})).json()["tasks"] == []
    assert (await http.get("/api/task/status")).json()["queue"]["queued"] == 0


async def test_other_refusals_queue_nothing(server: RunningServer, http: httpx.AsyncClient) -> None:
    owner = server.hub.identities.mint()
    mine = {"X-Client-Id": owner}
    unknown = await http.post("/api/tasks/no-such-kind", json=GOOD, headers=mine)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_kind")
    for name in ("", "   ", "n" * 201):
        named = await http.post("/api/tasks/resize", json=GOOD, params={"name": name}, headers=mine)
        assert (named.status_code, named.json()["error"]["field"]) == (422, "name")
    forged = await http.post("/api/tasks/resize", json=GOOD, headers={"X-Client-Id": owner[:-2] + "xx"})
    assert (forged.status_code, forged.json()["error"]["code"]) == (403, "forbidden_identity")
    oversized = await http.post("/api/tasks/resize", json={**GOOD, "image": "x" * 5000}, headers=mine)
    assert (oversized.status_code, oversized.json()["error"]["code"]) == (413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies as bytes arrive
        yield b'{"image": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'", "size": {"width": 1, "height": 1}}'

    streamed = await http.post("/api/tasks/resize", content=chunks(), headers=mine)
    assert (streamed.status_code, streamed.json()["error"]["code"]) == (413, "body_too_large")
    foreign = await http.post("/api/tasks/resize", json=GOOD, headers={**mine, "Origin": "https://evil.example"})
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (403, "origin_not_allowed")
    assert (await http.get("/api/tasks", headers=mine)).json()["tasks"] == []
    assert (await http.get("/api/task/status")).json()["queue"]["queued"] == 0


async def test_a_typed_task_runs_with_its_params(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with await WsClient.open(f"ws://127.0.0.1:{server.port}{PREFIX}/ws") as ws:
        await ws.next()
        started = await start_kind(http, "resize", GOOD, name="  a.png  ", **{"X-Socket-Id": ws.socket_id})
        assert started.status_code == 202
        task = started.json()
        assert (task["name"], task["status"], task["clientId"]) == ("a.png", "queued", ws.client_id)
        final = (await ws.until(terminal(task["id"])))[-1]["task"]
        assert (final["status"], final["result"]) == ("completed", {"area": 12})
        unnamed = (await start_kind(http, "resize", GOOD, **{"X-Socket-Id": ws.socket_id})).json()
        assert unnamed["name"] == "resize"  # the kind's name when none is given


async def test_a_kind_registered_after_the_app_was_built_is_served(adapter: str) -> None:
    hub = typed_hub()
    app = build_library_app(adapter, hub, TransportSettings())

    @hub.task("late")
    async def late(ctx: TaskContext) -> str:
        return "late but served"

    with serve(app, hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            started = await start_kind(http, "late", {"any": ["thing"]})
            assert started.status_code == 202, started.text


async def test_a_unique_key_answers_with_the_unfinished_task_instead_of_a_second(adapter: str) -> None:
    hub = typed_hub(concurrency=0)  # no worker: the first task stays queued
    with serve(build_library_app(adapter, hub, TransportSettings(), prefix=PREFIX), hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http + PREFIX) as http:
            first = await http.post("/api/tasks/resize", json=GOOD, params={"key": "a.png"})
            assert first.status_code == 202, first.text
            mine = {"X-Client-Id": first.json()["clientId"]}
            again = await http.post("/api/tasks/resize", json=GOOD, params={"key": "a.png", "name": "x"}, headers=mine)
            assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
            other = await http.post("/api/tasks/resize", json=GOOD, params={"key": "b.png"}, headers=mine)
            assert other.json()["id"] != first.json()["id"]
            for key in ("", "k" * 201):
                bad = await http.post("/api/tasks/resize", json=GOOD, params={"key": key}, headers=mine)
                assert (bad.status_code, bad.json()["error"]["field"]) == (422, "key")
            assert len((await http.get("/api/tasks", headers=mine)).json()["tasks"]) == 2
            await http.post(f"/api/task/{first.json()['id']}/cancel", headers=mine)
            fresh = await http.post("/api/tasks/resize", json=GOOD, params={"key": "a.png"}, headers=mine)
            assert fresh.json()["id"] != first.json()["id"]  # the first ended: the key starts a new one


async def test_require_identity_refuses_anonymous_callers_with_401(adapter: str) -> None:
    hub = typed_hub()
    settings = TransportSettings(require_identity=True)
    with serve(build_library_app(adapter, hub, settings), hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            for answer in (
                await http.post("/api/tasks/resize", json=GOOD),
                await http.get("/api/tasks"),
                await http.get("/api/task/some-id"),
                await http.post("/api/task/some-id/cancel"),
            ):
                assert answer.status_code == 401, answer.request.url
                assert answer.json()["error"]["code"] == "identity_required"
            owner = hub.identities.mint()
            assert (await http.post("/api/tasks/resize", json=GOOD, headers={"X-Client-Id": owner})).status_code == 202
            assert len((await http.get("/api/tasks", headers={"X-Client-Id": owner})).json()["tasks"]) == 1


async def test_require_identity_refuses_anonymous_sockets_and_streams(adapter: str) -> None:
    async def identify(request: RequestInfo) -> str | None:
        return "user:ada" if request.headers.get("x-user") == "ada" else None

    hub = typed_hub()
    settings = TransportSettings(require_identity=True, identify=identify)
    with serve(build_library_app(adapter, hub, settings), hub) as server:
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(server.ws)
        assert refused.value.response.status_code == 403
        async with await WsClient.open(server.ws, additional_headers={"X-User": "ada"}) as ada:
            assert ada.client_id == "user:ada"
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            for answer in (await http.get("/api/events"), await http.post("/api/events")):
                assert answer.status_code == 401, answer.request
                assert answer.json()["error"]["code"] == "identity_required"
            cookie = await http.post("/api/events", headers={"X-User": "ada"})
            assert (cookie.status_code, cookie.json()["clientId"]) == (200, "user:ada")
            async with http.stream("GET", "/api/events", headers={"X-User": "ada"}) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize(
    ("groups", "served", "absent"),
    [
        (("tasks",), ["/api/tasks"], ["/health", "/api/task/status", "/"]),
        (("ops",), ["/health", "/api/task/status"], ["/api/tasks", "/"]),
        (("ops", "index"), ["/", "/health"], ["/api/tasks"]),
    ],
)
async def test_route_groups_can_be_switched_off(
    adapter: str, groups: tuple[str, ...], served: list[str], absent: list[str]
) -> None:
    hub = typed_hub()
    with serve(build_library_app(adapter, hub, TransportSettings(), groups=groups), hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            for path in served:
                assert (await http.get(path)).status_code == 200, path
            for path in absent:
                assert (await http.get(path)).status_code in {404, 405}, path
            posted = await http.post("/api/tasks/resize", json=GOOD)
            assert (posted.status_code == 202) == ("tasks" in groups)
            if "index" in groups:
                listed = {f"{e['method']} {e['path']}" for e in (await http.get("/")).json()["endpoints"]}
                assert "GET /health" in listed
                assert "POST /api/tasks/resize" not in listed
