"""The event-stream (SSE) transport: the WebSocket's events over GET /api/events."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from progressq.transport import TransportSettings
from tests.apps import RunningServer, build_app, build_library_app, make_hub, serve
from tests.integration.client import Message, start_task, terminal
from tests.integration.test_tasks import assert_gapless, assert_progress_never_decreases, task_events
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio


class EventStream:
    """Reads SSE events: ``(event, id, data)`` with ``data`` decoded as JSON."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.received: list[Message] = []
        self.ids: list[str | None] = []
        self.comments = 0

    async def next(self, timeout: float = PATIENCE) -> Message:
        event: dict[str, str] = {}
        with anyio.fail_after(timeout):
            async for line in self._lines:
                if line == "":
                    if "data" in event:
                        break
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                field, _, value = line.partition(": ")
                event[field] = value
            else:
                raise EOFError("the stream ended")
        message: Message = json.loads(event["data"])
        assert event["event"] == message["type"]
        self.received.append(message)
        self.ids.append(event.get("id"))
        return message

    async def until(self, predicate: Callable[[Message], bool], timeout: float = PATIENCE) -> list[Message]:
        seen: list[Message] = []
        with anyio.fail_after(timeout):
            while not seen or not predicate(seen[-1]):
                seen.append(await self.next(timeout))
        return seen


@asynccontextmanager
async def open_stream(http: httpx.AsyncClient, **options: Any) -> AsyncIterator[EventStream]:
    async with http.stream("GET", "/api/events", **options) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


async def test_task_lifecycle_over_the_event_stream(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with open_stream(http) as stream:
        hello = await stream.next()
        assert hello["type"] == "connection"
        assert hello["clientId"] == hello["socketId"]
        snapshot = await stream.next()
        assert (snapshot["type"], snapshot["seq"], snapshot["tasks"]) == ("snapshot", 0, [])
        assert stream.ids[-1] == "0"
        started = (await start_task(http, "over sse", 1000, **{"X-Client-Id": hello["clientId"]})).json()
        messages = await stream.until(terminal(started["id"]))
    assert messages[-1]["task"]["status"] == "completed"
    assert_gapless(messages, after=0)
    assert_progress_never_decreases(messages)
    assert stream.ids[2:] == [str(m["seq"]) for m in messages]


async def test_event_streams_are_isolated(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with open_stream(http) as first, open_stream(http) as second:
        one, two = (await first.next())["clientId"], (await second.next())["clientId"]
        await first.next()
        await second.next()
        mine = (await start_task(http, "first's", 1000, **{"X-Client-Id": one})).json()
        theirs = (await start_task(http, "second's", 1000, **{"X-Client-Id": two})).json()
        await first.until(terminal(mine["id"]))
        await second.until(terminal(theirs["id"]))
    assert {m["task"]["id"] for m in task_events(first.received)} == {mine["id"]}
    assert {m["task"]["id"] for m in task_events(second.received)} == {theirs["id"]}


async def test_last_event_id_resumes_without_gap(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with open_stream(http) as stream:
        client_id = (await stream.next())["clientId"]
        await stream.next()
        started = (await start_task(http, "long", 10000, **{"X-Client-Id": client_id})).json()
        seen = await stream.until(lambda m: m.get("task", {}).get("progress", 0) >= 20)
    last = seen[-1]["seq"]
    headers = {"Last-Event-ID": str(last)}
    async with open_stream(http, params={"clientId": client_id}, headers=headers) as again:
        hello = await again.next()
        assert (hello["clientId"], hello["recovered"]) == (client_id, True)
        rest = await again.until(terminal(started["id"]))
    assert all(m["type"] != "snapshot" for m in rest)
    assert_gapless(rest, after=last)


async def test_bad_identification_is_refused(server: RunningServer, http: httpx.AsyncClient) -> None:
    for options in ({"params": {"clientId": "forged"}}, {"headers": {"X-Client-Id": "forged"}}):
        response = await http.get("/api/events", **options)  # type: ignore[arg-type]
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden_identity"


async def test_foreign_origin_is_refused(make_server: Any) -> None:
    with make_server(TransportSettings(allowed_origins=("https://app.example",))) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            refused = await http.get("/api/events", headers={"Origin": "https://evil.example"})
            assert refused.status_code == 403
            async with open_stream(http, headers={"Origin": "https://app.example"}) as stream:
                assert (await stream.next())["type"] == "connection"


async def test_closing_the_stream_releases_the_connection(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with open_stream(http) as stream:
        await stream.next()
        assert (await http.get("/api/task/status")).json()["connections"] == 1
    with anyio.fail_after(PATIENCE):
        while (await http.get("/api/task/status")).json()["connections"] != 0:
            await anyio.sleep(0.05)


async def test_a_browser_opens_its_stream_without_its_id_in_any_logged_url(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with make_server(uvicorn={"access_log": True}) as server:
        access = logging.getLogger("uvicorn.access")  # uvicorn's config does not propagate it
        access.addHandler(caplog.handler)
        level, access.level = access.level, logging.INFO  # the test server logs warnings only
        try:
            async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
                client_id = (await start_task(http, "mine", 1000)).json()["clientId"]
                answer = await http.post("/api/events", headers={"X-Client-Id": client_id})
                assert answer.status_code == 200, answer.text
                stream_key = answer.json()["stream"]
                assert client_id not in stream_key
                cookie = answer.headers["set-cookie"].lower()
                assert "httponly" in cookie
                assert "samesite=strict" in cookie
                # What an EventSource does: the URL, and the cookie the browser keeps for it.
                async with open_stream(http, params={"stream": stream_key}) as stream:
                    hello = await stream.next()
                    assert hello["clientId"] == client_id
                    assert [t["name"] for t in (await stream.next())["tasks"]] == ["mine"]
                # Its own cookie only: a made-up key or someone else's is not an identity.
                async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as other:
                    async with open_stream(other, params={"stream": stream_key}) as stranger:
                        assert (await stranger.next())["clientId"] != client_id
                    forged = await other.get(
                        "/api/events",
                        params={"stream": stream_key},
                        headers={"Cookie": f"pq_stream_{stream_key}=forged"},
                    )
                    assert forged.status_code == 403
                refused = await http.post("/api/events", headers={"X-Client-Id": "forged"})
                assert refused.status_code == 403
                foreign = await http.post(
                    "/api/events", headers={"X-Client-Id": client_id, "Origin": "https://evil.example"}
                )
                assert foreign.status_code == 403
        finally:
            access.removeHandler(caplog.handler)
            access.setLevel(level)
    logged = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/api/events?stream=" in line for line in logged), logged
    assert not [line for line in logged if client_id in line]


async def test_the_stream_is_not_held_back_by_compression_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    # Starlette's GZipMiddleware before 0.46 compressed (and so buffered) event streams;
    # ``exclude_content_types=()`` makes today's behave like it (0.46 to its option: an empty
    # module default). It leaves alone a response that declares its own Content-Encoding, as
    # the event stream does.
    from starlette.middleware import gzip
    from starlette.middleware.gzip import GZipMiddleware

    options: dict[str, Any] = {}
    if "exclude_content_types" in inspect.signature(GZipMiddleware).parameters:
        options["exclude_content_types"] = ()
    else:  # the lowest supported Starlette: the exclusion is a module constant
        monkeypatch.setattr(gzip, "DEFAULT_EXCLUDED_CONTENT_TYPES", (), raising=False)
    hub = make_hub()
    app = GZipMiddleware(build_app("starlette", hub, TransportSettings()), minimum_size=1, **options)
    with serve(app, hub) as server:
        async with httpx.AsyncClient(
            timeout=PATIENCE,
            base_url=server.http,
        ) as http:
            headers = {"Accept-Encoding": "gzip"}
            async with open_stream(http, headers=headers) as stream:
                assert stream.response.headers.get("content-encoding") == "identity"
                hello = await stream.next()
                assert hello["type"] == "connection"
                await stream.next()
                started = (await start_task(http, "compressed?", 1000, **{"X-Client-Id": hello["clientId"]})).json()
                await stream.until(
                    terminal(started["id"]),
                )
            # Other routes are still compressed: the middleware works.
            listed = await http.get("/api/tasks", headers={**headers, "X-Client-Id": hello["clientId"]})
            assert listed.headers.get("content-encoding") == "gzip"


@pytest.mark.parametrize("adapter", ["starlette", "litestar", "fastapi"])
async def test_every_adapter_serves_the_stream_cookie(adapter: str) -> None:
    hub = make_hub()
    with serve(build_library_app(adapter, hub, TransportSettings()), hub) as server:
        async with httpx.AsyncClient(
            timeout=PATIENCE,
            base_url=server.http,
        ) as http:
            client_id = hub.identities.mint()
            answer = await http.post("/api/events", headers={"X-Client-Id": client_id})
            assert answer.status_code == 200, answer.text
            async with open_stream(http, params={"stream": answer.json()["stream"]}) as stream:
                assert (await stream.next())["clientId"] == client_id
