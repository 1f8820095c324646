"""The isolation state machine: clients, their connections, event streams and sign-ins, and
the rules and invariants that drive a running server (see test_isolation_state_machine)."""

from __future__ import annotations

import json
import secrets
import select
import socket
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from progressq.transport import RequestInfo, TransportSettings
from tests.apps import RunningServer
from tests.integration.security_support import forged_ids, open_ws
from tests.waiting import PATIENCE

MAX_AGE = 3600.0  # the server refuses ids older than this: the "expired" forgeries are
METHODS = ("body", "x-socket-id", "x-session-id", "x-client-id")
ERROR_CODES = {"invalid_message", "not_found", "already_finished"}
CLIENTS = 3
USERS = ("ada", "bob")  # signed-in users of the app, each possibly on several clients (devices)
# Each run signs them in under names of its own (the server outlives runs; their tasks stay).


async def signed_in_user(request: RequestInfo) -> str | None:
    """The app's own sign-in: a ``session`` cookie names a user (see the identify how-to)."""
    cookies = SimpleCookie(request.headers.get("cookie", ""))
    session = cookies["session"].value if "session" in cookies else ""
    user = session.removeprefix("session-of-")
    return f"user:{user}" if session.startswith("session-of-") and user else None


def cookie_of(user: str | None) -> dict[str, str]:
    return {"cookie": f"session=session-of-{user}"} if user is not None else {}


SETTINGS = TransportSettings(messages_per_second=1000, message_burst=1000, identify=signed_in_user)


class LiveStream:
    """An open ``GET /api/events`` on a bare socket, read without blocking (an SSE client)."""

    def __init__(self, port: int, identity: str, headers: dict[str, str]) -> None:
        self.identity = identity
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.sock.sendall(
            f"GET /api/events?clientId={quote(identity)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Accept: text/event-stream\r\n{extra}\r\n".encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the event stream closed before its headers"
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head

    def arrived(self, wait: float = 0.0) -> list[str]:
        """The ``data`` of every complete event line received so far (waiting up to ``wait``
        seconds for something to arrive). Each event is one chunk of the chunked body, so
        chunk-size lines never split a ``data:`` line."""
        ready, _, _ = select.select([self.sock], [], [], wait)
        while ready:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._buffer += chunk
            ready, _, _ = select.select([self.sock], [], [], 0)
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line[6:].rstrip(b"\r").decode() for line in lines if line.startswith(b"data: ")]

    def close(self) -> None:
        self.sock.close()


class Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.held: set[str] = set()  # every identity this client has held
        self.ws: ClientConnection | None = None
        self.socket_id: str | None = None  # the open connection's own id (its first identity)
        self.following: str | None = None  # the identity the open connection follows now
        self.stream: LiveStream | None = None  # an open event stream, following one identity
        self.streamed: list[dict[str, Any]] = []  # what that stream delivered
        self.via = 0  # the web process it connects to (when there are several)
        self.user: str | None = None  # the user signed in on this client (its session cookie)

    @property
    def cookie(self) -> dict[str, str]:
        return cookie_of(self.user)


def drive(*servers: RunningServer) -> type[RuleBasedStateMachine]:
    """The machine, against one server or several web processes sharing one backend: then each
    connection goes to the process its ``connect`` chose, and HTTP requests take turns."""

    class Isolation(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.https = [httpx.Client(base_url=server.http, timeout=PATIENCE) for server in servers]
            self.turn = 0
            self.clients = [Client(f"c{i}") for i in range(CLIENTS)]
            self.owner_of: dict[str, str] = {}  # task id -> owner identity
            self.name_of: dict[str, str] = {}
            self.issued: list[str] = []  # every identity the server issued in this run
            # What the server did with each forged id: "refused", or what it did instead.
            self.forged_outcomes: list[tuple[str, str]] = []
            run = secrets.token_hex(4)
            self.user_names = {user: f"{user}-{run}" for user in USERS}
            self.not_found = self.http.get("/api/task/no-such-task").content

        @property
        def http(self) -> httpx.Client:
            """The next web process's HTTP client, in turn."""
            self.turn += 1
            return self.https[self.turn % len(self.https)]

        # --- helpers -------------------------------------------------------------------------

        def check_text(self, client: Client, text: str) -> None:
            for task_id, owner in self.owner_of.items():
                if owner not in client.held:
                    assert task_id not in text, f"{client.name} saw a task of another identity: {text}"
                    assert self.name_of[task_id] not in text, f"{client.name} saw another's task name: {text}"

        def check_views(self, client: Client, views: list[dict[str, Any]], owner: str) -> None:
            for view in views:
                assert self.owner_of.get(view["id"]) == owner, (
                    f"{client.name}, following {owner}, got an event of another identity's task: {view}"
                )

        def on_message(self, client: Client, raw: str | bytes) -> dict[str, Any]:
            text = raw if isinstance(raw, str) else raw.decode()
            message: dict[str, Any] = json.loads(text)
            kind = message["type"]
            if kind == "connection":
                client.held.add(message["clientId"])
                client.following = message["clientId"]
            self.check_text(client, text)
            if kind == "snapshot":
                assert client.following is not None
                self.check_views(client, message["tasks"], client.following)
            elif kind in ("taskQueued", "taskProgress"):
                assert client.following is not None
                self.check_views(client, [message["task"]], client.following)
            elif kind == "error":
                assert message["code"] in ERROR_CODES, message
            else:
                assert kind in ("connection", "pong"), message
            return message

        def read(self, client: Client, timeout: float = PATIENCE) -> dict[str, Any]:
            assert client.ws is not None
            return self.on_message(client, client.ws.recv(timeout=timeout))

        def read_until(self, client: Client, kind: str) -> list[dict[str, Any]]:
            seen = [self.read(client)]
            while seen[-1]["type"] != kind:
                seen.append(self.read(client))
            return seen

        def ensure_open(self, client: Client) -> ClientConnection:
            if client.ws is None:
                client.ws = open_ws(servers[client.via].ws, additional_headers=client.cookie)
                client.following = None
                hello = self.read(client)
                assert hello["type"] == "connection"
                assert hello["socketId"] not in self.issued, "a new connection was given a known identity"
                self.issued.append(hello["socketId"])
                client.held.add(hello["socketId"])
                client.socket_id = hello["socketId"]
                snapshot = self.read(client)
                assert snapshot["type"] == "snapshot"
                if client.user is None:  # anonymous: a fresh identity, no tasks
                    assert hello["clientId"] == hello["socketId"]
                    assert snapshot == {"type": "snapshot", "tasks": [], "seq": 0, "recovered": False}
                else:  # signed in: the user's identity, on every device, with the user's tasks
                    assert hello["clientId"] == f"user:{client.user}", hello
                    assert {view["id"] for view in snapshot["tasks"]} == self.tasks_of(hello["clientId"])
            return client.ws

        def close(self, client: Client) -> None:
            if client.ws is not None:
                client.ws.close()
            client.ws = client.socket_id = client.following = None

        def on_streamed(self, client: Client, text: str) -> dict[str, Any]:
            """Check one event of ``client``'s event stream: only its identity's tasks."""
            assert client.stream is not None
            message: dict[str, Any] = json.loads(text)
            self.check_text(client, text)
            kind = message["type"]
            if kind == "connection":
                assert message["clientId"] == client.stream.identity, message
            elif kind == "snapshot":
                self.check_views(client, message["tasks"], client.stream.identity)
            else:
                assert kind in ("taskQueued", "taskProgress"), message
                self.check_views(client, [message["task"]], client.stream.identity)
            client.streamed.append(message)
            return message

        def drain_stream(self, client: Client, wait: float = 0.0) -> None:
            if client.stream is not None:
                for text in client.stream.arrived(wait):
                    self.on_streamed(client, text)

        def close_stream(self, client: Client) -> None:
            if client.stream is not None:
                client.stream.close()
            client.stream = None
            client.streamed = []

        def usable(self, client: Client) -> list[str]:
            """The identities ``client`` can present now: every minted one it holds, and its
            user's while signed in (a user's id is a name, accepted only with the session)."""
            signed_in = f"user:{client.user}" if client.user is not None else None
            return sorted(i for i in client.held if not i.startswith("user:") or i == signed_in)

        def pick(self, client: Client, index: int) -> str:
            """One of the identities ``client`` can present (connecting it first if none)."""
            if not self.usable(client):
                self.ensure_open(client)
            usable = self.usable(client)
            return usable[index % len(usable)]

        def task(self, index: int) -> str | None:
            tasks = sorted(self.owner_of)
            return tasks[index % len(tasks)] if tasks else None

        def tasks_of(self, identity: str) -> set[str]:
            return {task_id for task_id, owner in self.owner_of.items() if owner == identity}

        def identify(self, method: str, identity: str) -> dict[str, Any]:
            if method == "body":
                return {"json": {"name": "x", "duration": 1000, "clientId": identity}}
            return {"json": {"name": "x", "duration": 1000}, "headers": {method: identity}}

        def refuse(self, what: str, response: httpx.Response) -> None:
            """Record the answer to a forged id: the invariant below judges it."""
            refused = (
                response.status_code == 403
                and response.content.startswith(b"{")
                and response.json()
                == {"error": {"code": "forbidden_identity", "message": "this client id was not issued by this server"}}
            )
            self.forged_outcomes.append((what, "refused" if refused else f"{response.status_code} {response.text}"))
            if response.status_code == 202:  # a task was started under the forged id: nobody holds it
                started = response.json()
                self.owner_of[started["id"]] = started["clientId"]
                self.name_of[started["id"]] = str(started.get("name", ""))

        # --- rules ---------------------------------------------------------------------------

        @rule(who=st.integers(0, CLIENTS - 1), via=st.integers(0, len(servers) - 1))
        def connect(self, who: int, via: int) -> None:
            """Connect to web process ``via`` (moving there if connected to another one)."""
            client = self.clients[who]
            if client.ws is not None and client.via != via:
                self.close(client)
            client.via = via
            self.ensure_open(client)

        @rule(who=st.integers(0, CLIENTS - 1), user=st.sampled_from(USERS))
        def sign_in(self, who: int, user: str) -> None:
            """The client signs in (an anonymous one, or another user's device switching)."""
            client = self.clients[who]
            self.close(client)
            self.close_stream(client)
            client.user = self.user_names[user]
            self.ensure_open(client)

        @rule(who=st.integers(0, CLIENTS - 1))
        def sign_out(self, who: int) -> None:
            client = self.clients[who]
            self.close(client)
            self.close_stream(client)
            client.user = None

        @rule(
            who=st.integers(0, CLIENTS - 1),
            user=st.sampled_from(USERS),
            route=st.sampled_from(["list", "start", "resume"]),
        )
        def present_a_users_id(self, who: int, user: str, route: str) -> None:
            """Name a user by id: served with that user's session, refused without it."""
            client = self.clients[who]
            identity = f"user:{self.user_names[user]}"
            mine = client.user == self.user_names[user]
            if route == "resume":
                ws = self.ensure_open(client)
                ws.send(json.dumps({"type": "resume", "clientId": identity}))
                if mine:
                    hello = self.read_until(client, "connection")[-1]
                    assert hello["clientId"] == identity, hello
                    if not hello["recovered"]:
                        assert self.read(client)["type"] == "snapshot"
                    return
                outcome = "no answer"
                try:
                    while True:
                        if self.read(client)["type"] == "connection":
                            outcome = f"resumed as {identity}"
                            break
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd is not None else None
                    outcome = "refused" if code == 1008 else f"closed with {code}"
                self.forged_outcomes.append((f"resume as {identity} signed in as {client.user}", outcome))
                self.close(client)
                return
            headers = {"x-client-id": identity, **client.cookie}
            if route == "list":
                response = self.http.get("/api/tasks", headers=headers)
            else:
                name = f"job {secrets.token_hex(6)}"
                response = self.http.post("/api/task/start", json={"name": name, "duration": 1000}, headers=headers)
            if not mine:
                self.refuse(f"{route} as {identity} signed in as {client.user}", response)
                return
            self.check_text(client, response.text)
            if route == "list":
                assert response.status_code == 200, response.text
                assert {view["id"] for view in response.json()["tasks"]} == self.tasks_of(identity)
            else:
                assert response.status_code == 202, response.text
                self.owner_of[response.json()["id"]] = identity
                self.name_of[response.json()["id"]] = name

        @rule(who=st.integers(0, CLIENTS - 1))
        def disconnect(self, who: int) -> None:
            self.close(self.clients[who])

        @rule(
            who=st.integers(0, CLIENTS - 1),
            which=st.integers(0, 50),
            adopt=st.booleans(),
            last_seq=st.none() | st.integers(0, 8),
        )
        def resume(self, who: int, which: int, adopt: bool, last_seq: int | None) -> None:
            """Take back an identity this client held, or one another client gave it."""
            client = self.clients[who]
            ws = self.ensure_open(client)
            identity = self.issued[which % len(self.issued)] if adopt else self.pick(client, which)
            client.held.add(identity)  # it knows the id now: it is that identity
            resume: dict[str, Any] = {"type": "resume", "clientId": identity}
            if last_seq is not None:
                resume["lastSeq"] = last_seq
            ws.send(json.dumps(resume))
            hello = self.read_until(client, "connection")[-1]
            assert (hello["clientId"], hello["socketId"]) == (identity, client.socket_id)
            if not hello["recovered"]:
                assert self.read(client)["type"] == "snapshot"

        @rule(who=st.integers(0, CLIENTS - 1), forged=forged_ids())
        def resume_forged(self, who: int, forged: tuple[str, str]) -> None:
            client = self.clients[who]
            ws = self.ensure_open(client)
            ws.send(json.dumps({"type": "resume", "clientId": forged[1]}))
            outcome = "no answer"
            try:
                while True:
                    message = self.read(client)
                    if message["type"] == "connection":
                        outcome = f"resumed as {message['clientId']}"
                        break
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                outcome = "refused" if code == 1008 else f"closed with {code}"
            self.forged_outcomes.append((f"resume {forged[0]}", outcome))
            self.close(client)

        @rule(
            who=st.integers(0, CLIENTS - 1),
            method=st.sampled_from((*METHODS, "socket", "none")),
            which=st.integers(0, 50),
            duration=st.sampled_from([1000, 30000]),
        )
        def start(self, who: int, method: str, which: int, duration: int) -> None:
            """Start a task by each way of naming its owner; followers of the owner hear of it."""
            client = self.clients[who]
            name = f"job {secrets.token_hex(6)}"
            body: dict[str, Any] = {"name": name, "duration": duration}
            headers: dict[str, str] = {}
            identity: str | None = None
            if method == "socket":  # the seed's habit: X-Socket-Id of the page's connection
                self.ensure_open(client)
                identity = client.socket_id
                headers["x-socket-id"] = str(identity)
            elif method == "body":
                identity = body["clientId"] = self.pick(client, which)
            elif method != "none":
                identity = headers[method] = self.pick(client, which)
            response = self.http.post("/api/task/start", json=body, headers={**headers, **client.cookie})
            assert response.status_code == 202, response.text
            started = response.json()
            if identity is None and client.user is not None:  # the session names the owner
                assert started["clientId"] == f"user:{client.user}", started
            elif identity is None:
                assert started["clientId"] not in self.issued
                self.issued.append(started["clientId"])
                client.held.add(started["clientId"])
            assert started["clientId"] == (identity or started["clientId"])
            self.owner_of[started["id"]] = started["clientId"]
            self.name_of[started["id"]] = name
            self.check_text(client, response.text)
            for other in self.clients:  # liveness: the owner's connections are told
                if other.ws is not None and other.following == started["clientId"]:
                    seen = [self.read(other)]
                    while seen[-1].get("task", {}).get("id") != started["id"]:
                        seen.append(self.read(other))
                    assert seen[-1]["type"] == "taskQueued"  # before any news of it running
            for other in self.clients:  # and so are the owner's open event streams
                if other.stream is not None and other.stream.identity == started["clientId"]:
                    deadline = time.monotonic() + PATIENCE
                    while not any(m.get("task", {}).get("id") == started["id"] for m in other.streamed):
                        assert time.monotonic() < deadline, f"{other.name}'s event stream missed {started['id']}"
                        self.drain_stream(other, wait=0.05)

        @rule(forged=forged_ids(), method=st.sampled_from(METHODS))
        def start_forged(self, forged: tuple[str, str], method: str) -> None:
            self.refuse(
                f"start {forged[0]} {method}", self.http.post("/api/task/start", **self.identify(method, forged[1]))
            )

        @rule(
            forged=forged_ids(),
            route=st.sampled_from(["list", "get", "cancel", "events"]),
            method=st.sampled_from(METHODS[1:]),
            which=st.integers(0, 50),
        )
        def read_forged(self, forged: tuple[str, str], route: str, method: str, which: int) -> None:
            headers = {method: forged[1]}
            task_id = quote(self.task(which) or "none")
            what = f"{route} {forged[0]} {method}"
            if route == "list":
                self.refuse(what, self.http.get("/api/tasks", headers=headers))
            elif route == "get":
                self.refuse(what, self.http.get(f"/api/task/{task_id}", headers=headers))
            elif route == "cancel":
                self.refuse(what, self.http.post(f"/api/task/{task_id}/cancel", headers=headers))
            else:
                with self.http.stream("GET", "/api/events", params={"clientId": forged[1]}) as response:
                    if response.status_code == 200:  # a stream was opened: say so without reading it forever
                        self.forged_outcomes.append((what, "an event stream was opened"))
                        return
                    response.read()
                self.refuse(what, response)

        @rule(who=st.integers(0, CLIENTS - 1), which=st.integers(0, 50), held=st.integers(0, 50))
        def get(self, who: int, which: int, held: int) -> None:
            client = self.clients[who]
            task_id, identity = self.task(which), self.pick(client, held)
            if task_id is None:
                return
            response = self.http.get(f"/api/task/{task_id}", headers={"x-client-id": identity, **client.cookie})
            self.check_text(client, response.text)
            if self.owner_of[task_id] == identity:
                assert response.status_code == 200
                assert response.json()["id"] == task_id
            else:  # exactly the answer for a task that does not exist: no oracle
                assert (response.status_code, response.content) == (404, self.not_found), (
                    f"{client.name} got an answer about another identity's task: {response.text}"
                )

        @rule(
            who=st.integers(0, CLIENTS - 1),
            which=st.integers(0, 50),
            held=st.integers(0, 50),
            method=st.sampled_from(METHODS[1:]),
        )
        def cancel_http(self, who: int, which: int, held: int, method: str) -> None:
            client = self.clients[who]
            task_id, identity = self.task(which), self.pick(client, held)
            if task_id is None:
                return
            response = self.http.post(f"/api/task/{task_id}/cancel", headers={method: identity, **client.cookie})
            self.check_text(client, response.text)
            if self.owner_of[task_id] == identity:
                assert response.status_code in (200, 202, 409), response.text
            else:
                assert (response.status_code, response.content) == (404, self.not_found)

        @rule(who=st.integers(0, CLIENTS - 1), which=st.integers(0, 50))
        def cancel_ws(self, who: int, which: int) -> None:
            client = self.clients[who]
            ws = self.ensure_open(client)
            task_id = self.task(which)
            if task_id is None:
                return
            ws.send(json.dumps({"type": "cancel", "taskId": task_id}))
            ws.send("ping")
            answers = self.read_until(client, "pong")
            not_found = [m for m in answers if m["type"] == "error" and m["code"] == "not_found"]
            assert len(not_found) == (0 if self.owner_of[task_id] == client.following else 1), answers

        @rule(who=st.integers(0, CLIENTS - 1), held=st.integers(0, 50), method=st.sampled_from(METHODS[1:]))
        def list_tasks(self, who: int, held: int, method: str) -> None:
            client = self.clients[who]
            identity = self.pick(client, held)
            response = self.http.get("/api/tasks", headers={method: identity, **client.cookie})
            self.check_text(client, response.text)
            listed = response.json()
            assert listed["clientId"] == identity
            assert {view["id"] for view in listed["tasks"]} == self.tasks_of(identity)

        @rule(who=st.integers(0, CLIENTS - 1), held=st.integers(0, 50))
        def open_live_stream(self, who: int, held: int) -> None:
            """Keep an event stream open: its live events are checked after every step."""
            client = self.clients[who]
            identity = self.pick(client, held)
            self.close_stream(client)
            client.stream = LiveStream(servers[client.via].port, identity, client.cookie)
            deadline = time.monotonic() + PATIENCE
            while not any(m["type"] == "snapshot" for m in client.streamed):
                assert time.monotonic() < deadline, "the event stream sent no snapshot"
                self.drain_stream(client, wait=0.05)
            snapshot = next(m for m in client.streamed if m["type"] == "snapshot")
            assert {view["id"] for view in snapshot["tasks"]} == self.tasks_of(identity)

        @rule(who=st.integers(0, CLIENTS - 1))
        def close_live_stream(self, who: int) -> None:
            self.close_stream(self.clients[who])

        @rule(who=st.integers(0, CLIENTS - 1), held=st.integers(0, 50))
        def event_stream(self, who: int, held: int) -> None:
            """An event stream's snapshot: exactly the identity's tasks."""
            client = self.clients[who]
            identity = self.pick(client, held)
            with self.http.stream(
                "GET", "/api/events", params={"clientId": identity}, headers=client.cookie
            ) as response:
                assert response.status_code == 200
                data = [line[6:] for line in _lines_until_snapshot(response)]
            for text in data:
                self.check_text(client, text)
            hello, snapshot = (json.loads(text) for text in data)
            assert hello["clientId"] == identity
            assert {view["id"] for view in snapshot["tasks"]} == self.tasks_of(identity)

        # --- invariants and teardown ---------------------------------------------------------

        @invariant()
        def nothing_leaked(self) -> None:
            """Read whatever arrived on every connection; on_message checks each message."""
            for client in self.clients:
                while client.ws is not None:
                    try:
                        self.read(client, timeout=0)
                    except TimeoutError:
                        break
                self.drain_stream(client)

        @invariant()
        def every_forged_id_was_refused(self) -> None:
            accepted = [(what, outcome) for what, outcome in self.forged_outcomes if outcome != "refused"]
            assert not accepted, f"a forged id was accepted: {accepted}"

        def teardown(self) -> None:
            for client in self.clients:
                self.close(client)
                self.close_stream(client)
            for http in self.https:
                http.close()

    return Isolation


def _lines_until_snapshot(response: httpx.Response) -> list[str]:
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data.append(line)
            if len(data) == 2:
                break
    return data
