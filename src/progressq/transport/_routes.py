"""The route table: every route progressq serves for one hub, as data every adapter iterates."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from progressq.errors import ConfigurationError
from progressq.hub import Hub, TaskKind

__all__ = (
    "ROUTE_GROUPS",
    "RouteGroup",
    "RouteSpec",
    "find_shadowed",
    "inline_schema",
    "normalize_prefix",
    "route_table",
)

RouteGroup = Literal["tasks", "live", "ops", "index"]
"""A group of routes that can be switched off as a whole:

- ``tasks``: start (``POST /api/tasks/{kind}``), list, get and cancel tasks;
- ``live``: the ``/ws`` WebSocket and the ``/api/events`` event stream;
- ``ops``: ``/health`` and ``/api/task/status``;
- ``index``: ``GET /``, the description of the routes.
"""
ROUTE_GROUPS: tuple[RouteGroup, ...] = get_args(RouteGroup)

Endpoint = Literal["index", "health", "status", "start", "list_tasks", "get_task", "cancel_task", "ws", "events"]

# A kind gets a route of its own (and so its own entry in OpenAPI) when its name is a plain
# path segment; any kind is also reachable through the generic ``{kind}`` route.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route of progressq, as every adapter registers it.

    Attributes:
        group: the group it belongs to.
        method: ``GET``, ``POST`` or ``WS``.
        path: the full path, prefix included, with ``{task_id}``/``{kind}`` parameters.
        name: the route's name (``progressq:...``).
        endpoint: which transport operation serves it.
        summary: one line for the API description and OpenAPI.
        kind: for a kind's own start route, that kind.
        in_schema: whether OpenAPI lists it (the generic start route is not listed: each
            kind's own route is).
    """

    group: RouteGroup
    method: Literal["GET", "POST", "WS"]
    path: str
    name: str
    endpoint: Endpoint
    summary: str
    kind: TaskKind | None = None
    in_schema: bool = True


def normalize_prefix(prefix: str) -> str:
    """``"pq/"`` and ``"/pq"`` both become ``"/pq"``; ``""`` and ``"/"`` become ``""``.

    Raises:
        ConfigurationError: the prefix has a parameter or a query.
    """
    stripped = prefix.strip().strip("/")
    if any(c in stripped for c in "{}?#"):
        raise ConfigurationError(f"a route prefix is a plain path like '/pq', not {prefix!r}")
    return f"/{stripped}" if stripped else ""


def route_table(hub: Hub, *, prefix: str = "", groups: Iterable[RouteGroup] | None = None) -> tuple[RouteSpec, ...]:
    """The routes to serve for ``hub``: one start route per kind registered now, then the rest.

    Args:
        hub: the hub, with its task kinds registered.
        prefix: the path all routes sit under (``"/pq"``).
        groups: the groups to serve; all of them when omitted.

    Raises:
        ConfigurationError: an unknown group or a bad prefix.
    """
    chosen = set(ROUTE_GROUPS if groups is None else groups)
    if unknown := chosen - set(ROUTE_GROUPS):
        raise ConfigurationError(f"unknown route groups {sorted(unknown)}; choose among {list(ROUTE_GROUPS)}")
    root = normalize_prefix(prefix)
    routes: list[RouteSpec] = []
    if "index" in chosen:
        routes.append(RouteSpec("index", "GET", root or "/", "progressq:index", "index", "this description"))
    if "ops" in chosen:
        routes += [
            RouteSpec(
                "ops",
                "GET",
                f"{root}/health",
                "progressq:health",
                "health",
                "200 when the hub runs and its backend answers, else 503",
            ),
            RouteSpec(
                "ops",
                "GET",
                f"{root}/api/task/status",
                "progressq:status",
                "status",
                "connections, clients and queue counts",
            ),
        ]
    if "tasks" in chosen:
        for kind in hub.task_kinds.values():
            if _PLAIN_SEGMENT.fullmatch(kind.name):
                summary = kind.description or f"start a task of kind {kind.name!r}"
                routes.append(
                    RouteSpec(
                        "tasks",
                        "POST",
                        f"{root}/api/tasks/{kind.name}",
                        f"progressq:start:{kind.name}",
                        "start",
                        summary,
                        kind,
                    )
                )
        routes += [
            RouteSpec(
                "tasks",
                "POST",
                f"{root}/api/tasks/{{kind}}",
                "progressq:start",
                "start",
                "start a task of a registered kind",
                in_schema=False,
            ),
            RouteSpec(
                "tasks", "GET", f"{root}/api/tasks", "progressq:tasks", "list_tasks", "the caller's tasks, newest first"
            ),
            RouteSpec(
                "tasks",
                "GET",
                f"{root}/api/task/{{task_id}}",
                "progressq:task",
                "get_task",
                "one of the caller's tasks",
            ),
            RouteSpec(
                "tasks",
                "POST",
                f"{root}/api/task/{{task_id}}/cancel",
                "progressq:cancel",
                "cancel_task",
                "cancel one of the caller's tasks",
            ),
        ]
    if "live" in chosen:
        routes += [
            RouteSpec("live", "WS", f"{root}/ws", "progressq:ws", "ws", "live events of the caller's tasks"),
            RouteSpec(
                "live",
                "GET",
                f"{root}/api/events",
                "progressq:events",
                "events",
                "the same events as an event stream (SSE)",
            ),
        ]
    return tuple(routes)


_PARAM = re.compile(r"\{[^}]*\}")


def _pattern(path: str) -> re.Pattern[str]:
    parts = _PARAM.split(path)
    params = _PARAM.findall(path)
    regex = re.escape(parts[0])
    for param, part in zip(params, parts[1:], strict=True):
        regex += (".*" if param.endswith(":path}") else "[^/]+") + re.escape(part)
    return re.compile(regex)


def _sample(path: str) -> str:
    return _PARAM.sub("{}", path)


def find_shadowed(ours: Iterable[tuple[str, str]], theirs: Iterable[tuple[str, str]]) -> list[str]:
    """The app's own routes (``(method, path)``, ``WS`` for a WebSocket) that clash with one of
    progressq's: the same method and a path that one of them would take the other's requests
    of (whichever was registered first)."""
    mine = [(method, _pattern(path), _sample(path)) for method, path in ours]
    clashes: set[str] = set()
    for method, path in theirs:
        pattern, sample = _pattern(path), _sample(path)
        for my_method, my_pattern, my_sample in mine:
            if method == my_method and (my_pattern.fullmatch(sample) or pattern.fullmatch(my_sample)):
                clashes.add(f"{method} {path}")
    return sorted(clashes)


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with its ``$defs`` references inlined (for an OpenAPI operation that
    cannot carry components); a type that refers to itself stays a plain ``object`` there."""
    definitions: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in seen or name not in definitions:
                    return {"type": "object"}
                return resolve(definitions[name], (*seen, name))
            return {key: resolve(value, seen) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema, ())
    return resolved
