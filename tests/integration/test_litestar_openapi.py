"""The Litestar app's OpenAPI schema, as served, describes the task routes with their msgspec types:
progressq's (each kind's start route with its params type) and the demo's own start route."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from progressq.transport import TransportSettings
from tests.apps import build_app, make_hub, serve


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    hub = make_hub()
    with serve(build_app("litestar", hub, TransportSettings()), hub) as server:
        response = httpx.get(f"{server.http}/schema/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def body_schema(answer: dict[str, Any]) -> Any:
    return answer["content"]["application/json"]["schema"]


ERRORS = {
    ("post", "/api/tasks/demo"): {"400", "401", "403", "404", "413", "422", "503"},
    ("get", "/api/tasks"): {"403", "503"},
    ("get", "/api/task/{task_id}"): {"403", "404", "503"},
    ("post", "/api/task/{task_id}/cancel"): {"403", "404", "409", "503"},
}


def test_every_http_route_is_listed(schema: dict[str, Any]) -> None:
    listed = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert listed == {
        ("get", "/health"),
        ("get", "/api/task/status"),
        ("post", "/api/task/start"),  # the demo's own
        ("post", "/api/tasks/demo"),
        ("get", "/api/tasks"),
        ("get", "/api/task/{task_id}"),
        ("post", "/api/task/{task_id}/cancel"),
    }


def test_a_kinds_start_route_takes_its_params_and_answers_202_with_the_started_task(schema: dict[str, Any]) -> None:
    start = schema["paths"]["/api/tasks/demo"]["post"]
    assert start["requestBody"]["required"] is True
    assert body_schema(start["requestBody"]) == ref("DemoParams")
    assert body_schema(start["responses"]["202"]) == ref("StartedTask")
    params = schema["components"]["schemas"]["DemoParams"]
    assert set(params["properties"]) == {"duration"}
    assert (params["properties"]["duration"]["minimum"], params["properties"]["duration"]["maximum"]) == (1000, 30000)
    started = schema["components"]["schemas"]["StartedTask"]
    assert {"id", "name", "status", "progress", "createdAt", "attempt", "clientId"} <= set(started["properties"])


def test_the_demos_own_start_route_documents_its_body(schema: dict[str, Any]) -> None:
    start = schema["paths"]["/api/task/start"]["post"]
    assert body_schema(start["requestBody"]) == ref("StartDemoTask")
    request = schema["components"]["schemas"]["StartDemoTask"]
    assert set(request["properties"]) == {"name", "duration", "clientId"}  # camelCase, as on the wire
    assert set(request["required"]) == {"name", "duration"}
    assert (request["properties"]["duration"]["minimum"], request["properties"]["duration"]["maximum"]) == (1000, 30000)


def test_task_routes_answer_task_views(schema: dict[str, Any]) -> None:
    assert body_schema(schema["paths"]["/api/tasks"]["get"]["responses"]["200"]) == ref("TaskList")
    assert set(schema["components"]["schemas"]["TaskList"]["properties"]) == {"clientId", "tasks"}
    assert body_schema(schema["paths"]["/api/task/{task_id}"]["get"]["responses"]["200"]) == ref("TaskView")
    cancel = schema["paths"]["/api/task/{task_id}/cancel"]["post"]["responses"]
    assert body_schema(cancel["200"]) == body_schema(cancel["202"]) == ref("TaskView")
    view = schema["components"]["schemas"]["TaskView"]
    assert set(view["properties"]) >= {"id", "status", "progress", "startedAt", "finishedAt", "error", "result"}
    parameters = schema["paths"]["/api/task/{task_id}"]["get"]["parameters"]
    assert [(p["name"], p["in"], p["required"]) for p in parameters] == [("task_id", "path", True)]


@pytest.mark.parametrize(("method", "path"), sorted(ERRORS))
def test_errors_are_documented_with_the_error_body(schema: dict[str, Any], method: str, path: str) -> None:
    responses = schema["paths"][path][method]["responses"]
    documented = {code for code, answer in responses.items() if code.startswith(("4", "5"))}
    assert ERRORS[method, path] <= documented
    for code in ERRORS[method, path]:
        assert body_schema(responses[code]) == ref("ErrorBody"), code
    error = schema["components"]["schemas"]["ErrorBody"]
    assert error["properties"]["error"] == ref("ErrorDetail")
    assert set(schema["components"]["schemas"]["ErrorDetail"]["properties"]) == {"code", "message", "field"}
