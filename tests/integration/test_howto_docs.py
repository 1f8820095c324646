"""The how-to pages' code, run as written: each page's ``python`` blocks, in order, are one module."""

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
from websockets.exceptions import InvalidStatus

from tests.apps import serve
from tests.integration.client import WsClient, start_kind, terminal
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

HOW_TO = Path(__file__).resolve().parents[2] / "docs" / "how-to"
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PROGRESSQ_SECRET", "docs-test-secret-0123456789abcdef")

    def load(name: str) -> types.ModuleType:
        blocks = _PYTHON_BLOCK.findall((HOW_TO / name).read_text())
        assert blocks, name
        module = types.ModuleType(f"docs_{name.removesuffix('.md').replace('-', '_')}")
        monkeypatch.setitem(sys.modules, module.__name__, module)  # frameworks resolve annotations there
        exec(compile("\n".join(blocks), str(HOW_TO / name), "exec"), module.__dict__)
        return module

    return load


async def run_a_task(server_http: str, ws_url: str, *, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=PATIENCE, base_url=server_http) as http, await WsClient.open(ws_url) as ws:
        assert (await ws.next())["type"] == "snapshot"
        started = (await start_kind(http, kind, params, name="from the docs", **{"X-Socket-Id": ws.socket_id})).json()
        final: dict[str, Any] = (await ws.until(terminal(started["id"])))[-1]["task"]
        return final


OPENAPI = {"mount-starlette.md": None, "mount-litestar.md": "/schema/openapi.json", "mount-fastapi.md": "/openapi.json"}


@pytest.mark.parametrize("name", sorted(OPENAPI))
async def test_an_app_from_the_docs_runs_two_typed_kinds_under_its_prefix(page: Any, name: str) -> None:
    """The how-to's app, as written: its own routes kept, two typed kinds started under /pq,
    a 422 naming the bad field, both start routes in its OpenAPI, the progress on its WebSocket."""
    docs = page(name)
    with serve(docs.app, docs.hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            home = await http.get("/")
            assert (home.status_code, home.json()) == (200, {"app": "mine", "ready": True})
            assert (await http.get("/health")).json() == {"app": "healthy"}
            assert (await http.get("/pq/health")).json()["status"] == "healthy"

            bad = await http.post("/pq/api/tasks/resize", json={"image": "a.png", "width": "wide", "height": 1})
            assert bad.status_code == 422
            assert (bad.json()["error"]["code"], bad.json()["error"]["field"]) == ("invalid_field", "width")
            missing = await http.post("/pq/api/tasks/export", json={"rows": 5})
            assert (missing.status_code, missing.json()["error"]["field"]) == (422, "table")
            assert (await http.post("/pq/api/tasks/nope", json={})).json()["error"]["code"] == "unknown_kind"

            async with await WsClient.open(f"ws://127.0.0.1:{server.port}/pq/ws") as ws:
                assert (await ws.next())["type"] == "snapshot"
                mine = {"X-Socket-Id": ws.socket_id}
                export = await start_kind(http, "export", {"table": "users"}, name="users.csv", prefix="/pq", **mine)
                resize = await start_kind(
                    http, "resize", {"image": "a.png", "width": 64, "height": 48}, prefix="/pq", **mine
                )
                assert (export.status_code, resize.status_code) == (202, 202)
                assert export.json()["clientId"] == ws.client_id
                exported = await ws.until(terminal(export.json()["id"]))
                assert any(m["task"]["message"].startswith("users: step") for m in exported if "task" in m)
                assert exported[-1]["task"]["result"] == {"rows": 1000}
                assert exported[-1]["task"]["name"] == "users.csv"
                resized = [m for m in ws.received if m.get("task", {}).get("id") == resize.json()["id"]]
                if not resized or resized[-1]["task"]["status"] != "completed":
                    resized = await ws.until(terminal(resize.json()["id"]))
                assert resized[-1]["task"]["result"] == {"width": 64, "height": 48}
            listed = (await http.get("/pq/api/tasks", headers=mine)).json()
            assert {t["id"] for t in listed["tasks"]} == {export.json()["id"], resize.json()["id"]}

            if OPENAPI[name] is not None:
                schema = (await http.get(OPENAPI[name])).json()
                for kind, fields in (("export", {"table", "rows"}), ("resize", {"image", "width", "height"})):
                    body = schema["paths"][f"/pq/api/tasks/{kind}"]["post"]["requestBody"]
                    body_schema = body["content"]["application/json"]["schema"]
                    if "$ref" in body_schema:
                        body_schema = schema["components"]["schemas"][body_schema["$ref"].rsplit("/", 1)[1]]
                    assert set(body_schema["properties"]) == fields
                assert "/pq/api/tasks/{kind}" not in schema["paths"]  # each kind has its own entry


@pytest.mark.parametrize("app", ["litestar_app", "starlette_app"])
async def test_enqueueing_from_ones_own_route(page: Any, app: str) -> None:
    docs = page("enqueue-from-your-route.md")
    with serve(getattr(docs, app), docs.hub) as server:
        async with (
            httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http,
            await WsClient.open(server.ws) as ws,
        ):
            await ws.next()
            response = await http.post("/albums/holiday/thumbnails", headers={"X-Client-Id": ws.client_id})
            assert response.status_code == 202
            assert response.json()["clientId"] == ws.client_id
            messages = await ws.until(terminal(response.json()["taskId"]))
            assert messages[0]["task"]["name"] == "thumbnails of holiday"
            assert (messages[-1]["task"]["status"], messages[-1]["task"]["result"]) == ("completed", {"photos": 12})
            forged = await http.post("/albums/holiday/thumbnails", headers={"X-Client-Id": "made-up"})
            assert (forged.status_code, forged.json()["error"]["code"]) == (403, "forbidden_identity")


@pytest.mark.parametrize("app", ["litestar_app", "starlette_app"])
async def test_the_identify_hook_names_signed_in_users(page: Any, app: str) -> None:
    docs = page("identify-hook.md")
    ada = {"Cookie": "session=session-of-ada-9f3b"}
    bob = {"Cookie": "session=session-of-bob-51c2"}
    with serve(getattr(docs, app), docs.hub) as server:
        async with (
            httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http,
            await WsClient.open(server.ws, additional_headers=ada) as ada_tab,
            await WsClient.open(server.ws, additional_headers=ada) as ada_other_tab,
            await WsClient.open(server.ws, additional_headers=bob) as bob_tab,
        ):
            assert ada_tab.client_id == ada_other_tab.client_id == "user:ada"
            assert bob_tab.client_id == "user:bob"
            for tab in (ada_tab, ada_other_tab, bob_tab):
                await tab.next()
            response = await start_kind(http, "export", name="ada's", **ada)
            assert response.json()["clientId"] == "user:ada"  # no id presented: the hook's
            for tab in (ada_tab, ada_other_tab):
                final = (await tab.until(terminal(response.json()["id"])))[-1]["task"]
                assert final["status"] == "completed"
            assert (await http.get("/api/tasks", headers=bob)).json()["tasks"] == []
            stolen = await http.get("/api/tasks", headers={"X-Client-Id": "user:ada", **bob})
            assert stolen.status_code == 403
            anonymous = await WsClient.open(server.ws)
            async with anonymous:
                assert docs.hub.identities.verify(anonymous.client_id)


async def test_limits_and_allowed_origins(page: Any) -> None:
    docs = page("limits-and-origins.md")
    with serve(docs.app, docs.hub) as server:
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(server.ws, origin="https://elsewhere.example")
        assert refused.value.response.status_code == 403
        async with await WsClient.open(server.ws, origin="https://admin.example") as ws:
            await ws.next()
            assert await ws.close_code({"type": "ping", "pad": "p" * 5000}) == 1009
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            big = await start_kind(http, "export", {"name": "x" * 17_000})
            assert (big.status_code, big.json()["error"]["code"]) == (413, "body_too_large")


async def test_the_tutorial_app_runs_as_written(page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # beside app.py: the page in static/
    (tmp_path / "static").mkdir()
    html = (HOW_TO.parent / "tutorial.md").read_text().split("```html\n", 1)[1].split("```", 1)[0]
    (tmp_path / "static" / "index.html").write_text(html)
    (tmp_path / "app.py").write_text("SECRET = 'not for the web'\n")
    docs = page("../tutorial.md")
    with serve(docs.app, docs.hub) as server:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            refused = await start_kind(http, "report", {"pages": "ten"})
            assert (refused.status_code, refused.json()["error"]["field"]) == (422, "pages")
        final = await run_a_task(server.http, server.ws, kind="report", params={"month": "2026-01", "pages": 2})
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http:
            served = await http.get("/index.html")
            source = await http.get("/app.py")
    assert (final["status"], final["result"], final["message"]) == ("completed", {"pages": 2}, "2026-01: page 2 of 2")
    assert (served.status_code, served.text) == (200, html)
    assert source.status_code == 404, "the app's own source is not served"


async def test_typed_task_kinds_work_as_the_page_says(page: Any) -> None:
    docs = page("task-kinds.md")
    from tests.test_engine import attach, wait_until

    assert await docs.submit_some("owner-docs") == ["size.width: Expected `int` >= 1"]
    hub = docs.hub
    assert (hub.task_kinds["resize"].description, hub.task_kinds["resize"].policy.max_attempts) == (
        "Resize one picture.",
        3,
    )
    async with hub:
        sink = await attach(hub, "owner-docs")
        resize = await hub.submit(
            "resize", owner="owner-docs", params={"path": "a.jpg", "size": {"width": 3, "height": 4}}
        )
        cleanup = await hub.submit("cleanup", owner="owner-docs", params={"paths": ["x", "y"]})
        checksum = await hub.submit("checksum", owner="owner-docs", params=docs.Checksum("abc", rounds=300))
        await wait_until(lambda: all(sink.has_status(r.id, "completed") for r in (resize, cleanup, checksum)), 60)
    finals = {r.id: sink.last(r.id) for r in (resize, cleanup, checksum)}
    assert (finals[resize.id].result, finals[resize.id].message) == ({"pixels": 12}, "pass 4 of 4 on a.jpg")
    assert finals[cleanup.id].message == "removed 2 files"
    assert finals[checksum.id].message == "round 300"
    assert finals[checksum.id].result == docs.checksum_blocking(b"abc", 300, lambda *_: None)
    assert any(v.message == "round 100" for v in sink.views(checksum.id))


async def test_the_observability_page_serves_metrics_and_hooks_run(page: Any) -> None:
    docs = page("observability.md")
    assert [type(h).__name__ for h in docs.hub.hooks.hooks] == ["PrometheusMetrics", "OpenTelemetryHooks"]
    with serve(docs.app, docs.hub) as server:
        async with (
            httpx.AsyncClient(timeout=PATIENCE, base_url=server.http) as http,
            await WsClient.open(server.ws) as ws,
        ):
            await ws.next()
            scraped = await http.get("/metrics/")
    assert scraped.status_code == 200
    assert "progressq_connections 1.0" in scraped.text
    assert "progressq_backend_up 1.0" in scraped.text
    audit = docs.AuditHooks()
    from progressq import AttemptOutcome, Submission

    submission = Submission(kind="export", owner="o", name="n")
    with audit.on_submit(submission):
        pass
    assert submission.context == {"tenant": "acme"}
    record = docs.TaskRecord(id="t1", kind="export", name="n", owner="o", attempt=1, context=submission.context)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda entry: lines.append(entry.getMessage())  # type: ignore[method-assign]
    docs.audit.addHandler(handler)
    docs.audit.setLevel(logging.INFO)
    try:
        audit.attempt_ended(record, AttemptOutcome("completed", 0.5))
    finally:
        docs.audit.removeHandler(handler)
    assert lines == ["export t1 attempt 1 completed in 0.500 s (tenant acme)"]


async def test_the_readme_app_runs_and_its_task_awaits_its_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGRESSQ_SECRET", "docs-test-secret-0123456789abcdef")
    readme = HOW_TO.parents[1] / "README.md"
    [block] = _PYTHON_BLOCK.findall(readme.read_text())
    module = types.ModuleType("docs_readme")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, str(readme), "exec"), module.__dict__)
    awaited: list[int] = []
    monkeypatch.setitem(module.__dict__, "render_row", awaited.append)
    with serve(module.app, module.hub) as server:
        final = await run_a_task(
            f"{server.http}/pq", f"{server.ws.removesuffix('/ws')}/pq/ws", kind="report", params={"rows": 10}
        )
    assert (final["status"], final["result"]) == ("completed", {"rows": 10})
    assert awaited == list(range(10))


async def test_the_home_page_app_runs_as_written(page: Any) -> None:
    docs = page("../index.md")
    with serve(docs.app, docs.hub) as server:
        final = await run_a_task(server.http, server.ws, kind="import", params={"url": "https://example.com/a.csv"})
    assert (final["status"], final["progress"], final["message"]) == ("completed", 100.0, "step 10 of 10")


async def test_the_backend_written_on_the_page_runs_a_hub_and_passes_the_suite(page: Any, tmp_path: Path) -> None:
    docs = page("write-a-backend.md")
    from tests.test_engine import attach, wait_until

    async with docs.hub:
        sink = await attach(docs.hub, "owner-docs")
        task = await docs.hub.submit("count", owner="owner-docs")
        await wait_until(lambda: sink.has_status(task.id, "completed"), 60)
    final = sink.last(task.id)
    assert final is not None
    assert (final.result, final.message) == ({"counted": 3}, "counted 3")
    # the page's conformance class, run by pytest as a reader would (a part of the suite: the
    # whole of it runs on the memory backend in tests/test_conformance.py)
    blocks = _PYTHON_BLOCK.findall((HOW_TO / "write-a-backend.md").read_text())
    (tmp_path / "test_my_backend.py").write_text("\n".join(blocks))
    selected = "task_life or stale_lease or enqueue_and_announce or save_and_publish or lease_many or seq_is_gapless"
    run = await anyio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selected, str(tmp_path)],
        cwd=tmp_path,
        check=False,
    )
    output = run.stdout.decode()
    assert run.returncode == 0, output
    assert " passed" in output, output
    assert "failed" not in output, output
