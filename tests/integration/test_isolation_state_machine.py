"""Isolation, proven against the running server by a Hypothesis state machine.

Several clients connect, disconnect, resume, start tasks by every way of naming an
identity, cancel, list and get their own tasks and others', keep event streams (SSE) open
and read their live events, and present forged ids. The server has an ``identify`` hook:
clients sign in and out as users (a session cookie), several at once as the same user (its
devices), and name users by id with and without that user's session. An
identity id is a capability: a client that was given another's id (here: "adopts" it) is
that identity by design, so it then holds it. After every step:

- no client has received anything (an event, a snapshot, a task view, an error) that names
  a task of an identity it never held — by task id or task name, anywhere in the text;
- every event on a WebSocket belongs to the identity that connection follows at that point;
- every forged, tampered, truncated, expired or foreign-secret id was refused (403, close 1008):
  each attempt's outcome is recorded, and an invariant fails on any that is not a refusal.

The last test runs the machine's own rules, step by step, against deliberately broken servers
(events broadcast to everyone, on WebSockets and event streams; a task answered without its
owner checked; any id taken at its word, on resume and on start; a user's id accepted without
the user's session) and requires each breakage to be caught: checks that cannot fail prove
nothing.

Sync clients (httpx, websockets' sync client) drive a real uvicorn serving each adapter, on
the memory backend, on Redis and on PostgreSQL where they answer (``make_server`` runs on
each), and two web processes (one per adapter) on one Redis or one PostgreSQL database, where a
client may connect to either and resume on the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from progressq import Hub
from progressq.backends.memory import MemoryClientRegistry
from progressq.errors import TaskNotFound
from progressq.identity import IdentityAuthority
from progressq.transport import RequestInfo
from progressq.transport._identity import IdentityResolver
from tests.apps import FRAMEWORKS, build_app, make_hub, serve
from tests.integration.isolation_machine import MAX_AGE, SETTINGS, drive
from tests.integration.security_support import LONG, budget, error_log
from tests.postgres_support import database_url, drop_schema, new_schema
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, require_redis
from tests.waiting import PATIENCE


def test_no_client_ever_sees_another_identitys_task(make_server: Any) -> None:
    """On each adapter and each backend (``make_server`` is parametrized over both)."""
    with make_server(SETTINGS, identity_max_age=MAX_AGE) as server:
        with error_log() as errors:
            run_state_machine_as_test(
                drive(server),
                settings=settings(
                    max_examples=budget(20),
                    stateful_step_count=60 if LONG else 30,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        assert errors.records == [], errors.text()


@pytest.mark.parametrize(
    "kind", [pytest.param("redis", marks=pytest.mark.redis), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_two_web_processes_on_one_backend_keep_clients_apart(kind: str) -> None:
    """A Starlette and a Litestar process on one Redis, or one PostgreSQL database: clients
    connect to either, move, resume on the other, and read and start tasks through both."""
    pytest.importorskip("litestar", reason='needs pip install "progressq[litestar]"')
    if kind == "redis":
        require_redis()
        from progressq.backends.redis import RedisBackend

        place = new_prefix("isolation-two")
        hubs = [
            make_hub(identity_max_age=MAX_AGE, backend=RedisBackend.from_url(REDIS_URL, prefix=place))
            for _ in FRAMEWORKS
        ]
    else:
        url = database_url()
        from progressq.backends.postgres import PostgresBackend

        place = new_schema("isolation_two")
        hubs = [
            make_hub(identity_max_age=MAX_AGE, backend=PostgresBackend.from_url(url, schema=place)) for _ in FRAMEWORKS
        ]
    try:
        with (
            serve(build_app(FRAMEWORKS[0], hubs[0], SETTINGS), hubs[0]) as first,
            serve(build_app(FRAMEWORKS[1], hubs[1], SETTINGS), hubs[1]) as second,
            error_log() as errors,
        ):
            run_state_machine_as_test(
                drive(first, second),
                settings=settings(
                    max_examples=budget(15),
                    stateful_step_count=60 if LONG else 30,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        assert errors.records == [], errors.text()
    finally:
        if kind == "redis":
            delete_prefix(place)
        else:
            drop_schema(place)


# --- the same machine against deliberately broken servers: each break must be caught -------


async def _broadcast(original: Any, registry: Any, identity: str, *event: Any) -> Any:
    """Publish to the owner, then to every other identity the registry knows: a broadcast."""
    published = await original(registry, identity, *event)
    for other in [known for known in registry._states if known != identity]:
        await original(registry, other, *event)
    return published


def _break_broadcast(monkeypatch: pytest.MonkeyPatch) -> None:
    original = MemoryClientRegistry.publish

    async def publish(self: MemoryClientRegistry, identity: str, *event: Any) -> Any:
        return await _broadcast(original, self, identity, *event)

    monkeypatch.setattr(MemoryClientRegistry, "publish", publish)


def _break_owner_check(monkeypatch: pytest.MonkeyPatch) -> None:
    async def get(self: Hub, task_id: str, *, owner: str) -> Any:
        record = await self.queue.get(task_id)  # no comparison with the owner
        if record is None:
            raise TaskNotFound(task_id)
        return record

    monkeypatch.setattr(Hub, "get", get)


def _break_identity_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any id is taken at its word: a resume (or a request) with a forged id is accepted."""
    monkeypatch.setattr(IdentityAuthority, "verify", lambda self, value: isinstance(value, str) and bool(value))


def _a_second_client_hears_of_the_first_ones_task(machine: Any) -> None:
    machine.connect(who=0, via=0)
    machine.connect(who=1, via=0)
    machine.start(who=0, method="socket", which=0, duration=1000)
    machine.read(machine.clients[1])  # its only news is of c0's task


def _a_second_clients_event_stream_hears_of_the_first_ones_task(machine: Any) -> None:
    machine.connect(who=0, via=0)
    machine.open_live_stream(who=1, held=0)
    machine.start(who=0, method="socket", which=0, duration=1000)
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        machine.drain_stream(machine.clients[1], wait=0.05)


def _a_client_asks_for_another_ones_task(machine: Any) -> None:
    machine.start(who=0, method="none", which=0, duration=1000)
    machine.get(who=1, which=0, held=0)


def _a_client_resumes_a_forged_id(machine: Any) -> None:
    machine.resume_forged(who=0, forged=("random", "made-up"))
    machine.every_forged_id_was_refused()


def _a_client_starts_a_task_with_a_forged_id(machine: Any) -> None:
    machine.start_forged(forged=("tampered", "made.up.id"), method="x-client-id")
    machine.every_forged_id_was_refused()


def _break_vouching(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's id is accepted from anyone, not only with that user's session."""
    original = IdentityResolver.accepts

    async def accepts(self: IdentityResolver, request: RequestInfo, presented: str) -> bool:
        return presented.startswith("user:") or await original(self, request, presented)

    monkeypatch.setattr(IdentityResolver, "accepts", accepts)


def _an_anonymous_client_names_a_user(machine: Any) -> None:
    machine.sign_in(who=0, user="ada")
    machine.start(who=0, method="none", which=0, duration=1000)
    machine.present_a_users_id(who=1, user="ada", route="list")
    machine.every_forged_id_was_refused()


def _another_user_resumes_as_a_user(machine: Any) -> None:
    machine.sign_in(who=1, user="bob")
    machine.present_a_users_id(who=1, user="ada", route="resume")
    machine.every_forged_id_was_refused()


@pytest.mark.parametrize(
    ("breakage", "steps", "caught_by"),
    [
        (_break_broadcast, _a_second_client_hears_of_the_first_ones_task, "another identity"),
        (_break_broadcast, _a_second_clients_event_stream_hears_of_the_first_ones_task, "another identity"),
        (_break_owner_check, _a_client_asks_for_another_ones_task, "(got an answer about|saw a task of) another"),
        (_break_identity_check, _a_client_resumes_a_forged_id, "a forged id was accepted"),
        (_break_identity_check, _a_client_starts_a_task_with_a_forged_id, "a forged id was accepted"),
        (_break_vouching, _an_anonymous_client_names_a_user, "(a forged id was accepted|another identity)"),
        (_break_vouching, _another_user_resumes_as_a_user, "a forged id was accepted"),
    ],
    ids=[
        "broadcast-ws",
        "broadcast-sse",
        "owner-check",
        "identity-check-resume",
        "identity-check-start",
        "user-id-without-session",
        "user-resume-without-session",
    ],
)
def test_the_invariants_catch_a_broken_server(
    breakage: Callable[[pytest.MonkeyPatch], None],
    steps: Callable[[Any], None],
    caught_by: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Proof that the checks above can fail: the machine's own rules and invariants, run
    step by step against a server with isolation broken on purpose, catch each breakage."""
    breakage(monkeypatch)
    hub = make_hub(identity_max_age=MAX_AGE)
    with serve(build_app("starlette", hub, SETTINGS), hub) as server:
        machine = drive(server)()
        try:
            with pytest.raises(AssertionError, match=caught_by):
                steps(machine)
        finally:
            machine.teardown()
