"""Sending on the publisher's stack (asyncio): at once when the peer can take it, through a
writer task when a send has to wait, and never at the publisher's expense."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from progressq import Hub, MemoryBackend
from progressq.transport import RequestInfo, TransportSettings, _inline
from progressq.transport._adapters import AsgiWebSocketPeer
from progressq.transport._connection import Connection
from progressq.transport._identity import IdentityResolver
from progressq.transport._peer import PeerDefaults, PeerGone
from tests.waiting import PATIENCE

OWNER = "owner-a"
SECRET = "inline-tests-secret-0123456789abcdef"


class ScriptedPeer(PeerDefaults):
    """A peer that records what it is sent; a send waits while ``gate`` is closed."""

    sends_inline = True

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate: anyio.Event | None = None
        self.fail_with: Exception | None = None
        self.abandoned = 0  # sends that were interrupted while waiting
        self.gone = anyio.Event()

    async def accept(self) -> None:
        pass

    async def receive(self) -> str:
        await self.gone.wait()
        raise PeerGone

    async def send(self, text: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if self.gate is not None and not self.gate.is_set():
            try:
                await self.gate.wait()
            except BaseException:
                self.abandoned += 1
                raise
        self.sent.append(text)

    async def close(self, code: int, reason: str = "") -> None:
        pass


class Served:
    def __init__(self, hub: Hub, peer: ScriptedPeer, settings: TransportSettings, connection: Connection) -> None:
        self.connection = connection
        self.hub = hub
        self.peer = peer
        self.settings = settings
        self.ended = anyio.Event()

    async def publish(self, n: int) -> None:
        await self.hub.registry.publish(OWNER, "taskProgress", "t", n, b'{"id":"t","n":%d}' % n)

    def events(self) -> list[str]:
        return [text for text in self.peer.sent if '"taskProgress"' in text]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # inline sends exist only on asyncio; trio is tested below


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    settings: TransportSettings = getattr(request, "param", TransportSettings(send_timeout=0.3))
    peer = ScriptedPeer()
    hub = Hub(MemoryBackend(), secret=SECRET)
    async with hub, anyio.create_task_group() as group:
        connection = Connection(hub, settings, IdentityResolver(hub.identities, None), peer, RequestInfo({}), "s1")
        served = Served(hub, peer, settings, connection)

        async def run() -> None:
            try:
                await connection.run(OWNER)
            finally:
                served.ended.set()

        group.start_soon(run)
        with anyio.fail_after(PATIENCE):
            while len(peer.sent) < 2:  # connection and snapshot
                await anyio.sleep(0.001)
        yield served
        peer.gone.set()


@pytest.mark.anyio
async def test_a_send_that_need_not_wait_happens_on_the_publishers_stack(served: Served) -> None:
    await served.publish(1)
    # No checkpoint since the publish: only an inline send can have sent it already.
    assert served.events() == ['{"type":"taskProgress","seq":1,"task":{"id":"t","n":1}}']


@pytest.mark.anyio
async def test_a_send_that_waits_holds_up_no_publisher_and_keeps_the_order(served: Served) -> None:
    gate = served.peer.gate = anyio.Event()
    with anyio.fail_after(PATIENCE):  # every publish returns although the first send waits
        for n in range(1, 6):
            await served.publish(n)
    assert served.events() == []
    gate.set()
    with anyio.fail_after(PATIENCE):
        while len(served.events()) < 5:
            await anyio.sleep(0.001)
    assert [int(text.split('"seq":')[1].split(",")[0]) for text in served.events()] == [1, 2, 3, 4, 5]
    # The writer ends once it has caught up: the next send is inline again.
    await anyio.sleep(0.05)
    await served.publish(6)
    assert len(served.events()) == 6


@pytest.mark.anyio
async def test_what_was_taken_with_a_send_that_waits_is_sent_after_it_in_order(served: Served) -> None:
    # Several messages queued before the inline sender runs (as when one hook call queues
    # more than one): the first waits, the writer sends the others after it.
    outbox = served.connection._outbox
    served.peer.gate = gate = anyio.Event()
    hook, outbox.on_idle_put = outbox.on_idle_put, None
    for text in ("a", "b", "c"):
        outbox.put(text)
    outbox.on_idle_put = hook
    served.connection._on_put()
    outbox.put("d")
    assert served.peer.sent[2:] == []
    gate.set()
    with anyio.fail_after(PATIENCE):
        while len(served.peer.sent) < 6:
            await anyio.sleep(0.001)
    assert served.peer.sent[2:] == ["a", "b", "c", "d"]


@pytest.mark.anyio
async def test_a_send_that_sets_a_context_variable_leaves_the_publishers_context_alone(served: Served) -> None:
    # Tracing middleware sets a context variable around ``send`` and resets it afterwards,
    # also after a suspension: every step runs in one context of its own.
    current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="publisher")
    original_send = served.peer.send

    async def traced_send(text: str) -> None:
        token = current.set("send")
        try:
            await original_send(text)
        finally:
            current.reset(token)  # in another task when the send had to wait

    served.peer.send = traced_send  # type: ignore[method-assign]
    served.peer.gate = gate = anyio.Event()
    await served.publish(1)  # suspends on the publisher's stack, finished by the writer
    assert current.get() == "publisher"
    gate.set()
    with anyio.fail_after(PATIENCE):
        while not served.events():
            await anyio.sleep(0.001)
    await served.publish(2)  # finishes at once
    assert current.get() == "publisher"
    assert len(served.events()) == 2
    assert not served.ended.is_set()  # no send failed


@pytest.mark.anyio
async def test_an_unexpected_error_in_a_send_is_logged_and_closes_with_1011(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[int] = []
    original_close = served.peer.close

    async def close(code: int, reason: str = "") -> None:
        closed.append(code)
        await original_close(code, reason)

    served.peer.close = close  # type: ignore[method-assign]
    served.peer.fail_with = TypeError("a bug in a send wrapper")
    await served.publish(1)  # does not raise
    with anyio.fail_after(PATIENCE):
        await served.ended.wait()
    assert closed == [1011]
    assert "a connection failed" in caplog.text


@pytest.mark.anyio
async def test_a_send_that_queues_another_message_keeps_the_order(served: Served) -> None:
    # "a" and "b" are queued together; sending "a" queues "echo" (a wrapper that reports
    # through the same connection): "echo" must go after "b", which was queued before it.
    outbox = served.connection._outbox
    original_send = served.peer.send

    async def echoing_send(text: str) -> None:
        await original_send(text)
        if text == "a":
            outbox.put("echo")

    served.peer.send = echoing_send  # type: ignore[method-assign]
    hook, outbox.on_idle_put = outbox.on_idle_put, None
    now, outbox.send_now = outbox.send_now, None
    outbox.put("a")
    outbox.put("b")
    outbox.on_idle_put, outbox.send_now = hook, now
    served.connection._on_put()
    assert served.peer.sent[2:] == ["a", "b", "echo"]


@pytest.mark.anyio
async def test_a_message_sent_at_once_that_queues_another_keeps_the_order(served: Served) -> None:
    # "a" goes out at once (an empty outbox, nothing sending): its send queues "echo",
    # which must follow it, before "b" that is put after "a" was sent.
    outbox = served.connection._outbox
    original_send = served.peer.send

    async def echoing_send(text: str) -> None:
        await original_send(text)
        if text == "a":
            outbox.put("echo")

    served.peer.send = echoing_send  # type: ignore[method-assign]
    outbox.put("a")
    assert served.peer.sent[2:] == ["a", "echo"]  # both on this stack: nothing left queued
    assert len(outbox) == 0
    outbox.put("b")
    assert served.peer.sent[2:] == ["a", "echo", "b"]


@pytest.mark.anyio
async def test_a_send_that_waits_past_send_timeout_ends_the_connection(served: Served) -> None:
    served.peer.gate = anyio.Event()  # never opened
    with anyio.fail_after(PATIENCE):
        await served.publish(1)
        await served.publish(2)
    with anyio.fail_after(PATIENCE):
        await served.ended.wait()
    assert served.peer.abandoned == 1  # the waiting send was interrupted, not left behind
    assert served.hub.registry.statistics().connections == 0
    with anyio.fail_after(PATIENCE):
        await served.publish(3)  # publishing to an identity whose connection went is fine


@pytest.mark.anyio
async def test_a_send_that_fails_at_once_ends_the_connection_not_the_publisher(served: Served) -> None:
    served.peer.fail_with = PeerGone()
    await served.publish(1)  # does not raise
    with anyio.fail_after(PATIENCE):
        await served.ended.wait()
    assert served.hub.registry.statistics().connections == 0


@pytest.mark.anyio
@pytest.mark.parametrize("served", [TransportSettings(send_inline=False)], indirect=True)
async def test_with_send_inline_off_every_send_goes_through_the_writer(served: Served) -> None:
    await served.publish(1)
    assert served.events() == []  # not on the publisher's stack
    with anyio.fail_after(PATIENCE):
        while not served.events():
            await anyio.sleep(0.001)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_sends_go_through_the_writer(anyio_backend: str) -> None:
    assert not _inline.available()
    peer = ScriptedPeer()
    hub = Hub(MemoryBackend(), secret=SECRET)
    async with hub, anyio.create_task_group() as group:
        resolver = IdentityResolver(hub.identities, None)
        connection = Connection(hub, TransportSettings(), resolver, peer, RequestInfo({}), "s")
        group.start_soon(connection.run, OWNER)
        with anyio.fail_after(PATIENCE):
            while len(peer.sent) < 2:
                await anyio.sleep(0.001)
        await hub.registry.publish(OWNER, "taskProgress", "t", 1, b"{}")
        assert len(peer.sent) == 2
        with anyio.fail_after(PATIENCE):
            while len(peer.sent) < 3:
                await anyio.sleep(0.001)
        peer.gone.set()


# --- the trampoline itself ----------------------------------------------------------------


@pytest.mark.anyio
async def test_start_finishes_a_coroutine_that_never_suspends() -> None:
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    assert _inline.start(quick()) is None
    assert done == [1]


def test_first_step_tells_a_finished_coroutine_from_one_that_yielded_and_raises_its_error() -> None:
    async def returns_a_value() -> Any:
        return 5  # not None: still finished

    async def yields() -> None:
        await asyncio.sleep(0)  # a bare yield: None

    async def fails() -> None:
        raise OSError("gone")

    context = contextvars.copy_context()
    assert _inline.first_step(returns_a_value(), context) is _inline.FINISHED
    suspended = yields()
    assert _inline.first_step(suspended, context) is None
    suspended.close()
    with pytest.raises(OSError, match="gone"):
        _inline.first_step(fails(), context)


@pytest.mark.anyio
async def test_the_rest_of_a_suspended_coroutine_runs_in_the_task_that_awaits_it() -> None:
    gate = asyncio.Event()
    steps: list[str] = []

    async def slow() -> None:
        steps.append("before")
        await gate.wait()
        await asyncio.sleep(0)
        steps.append("after")

    unfinished = _inline.start(slow())
    assert unfinished is not None
    assert steps == ["before"]

    async def finish() -> None:
        await unfinished

    task = asyncio.ensure_future(finish())
    await asyncio.sleep(0.01)
    assert steps == ["before"]
    gate.set()
    await asyncio.wait_for(task, 1)
    assert steps == ["before", "after"]


def start_stuck(cleaned: list[bool]) -> _inline.Unfinished:
    """A coroutine suspended for good, started inline; it notes when it is cleaned up."""

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    unfinished = _inline.start(stuck())
    assert unfinished is not None
    return unfinished


@pytest.mark.anyio
async def test_cancelling_the_awaiting_task_reaches_the_suspended_coroutine() -> None:
    cleaned: list[bool] = []
    unfinished = start_stuck(cleaned)
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.05):
            await unfinished
    assert cleaned == [True]


@pytest.mark.anyio
async def test_an_abandoned_rest_can_be_closed() -> None:
    cleaned: list[bool] = []
    unfinished = start_stuck(cleaned)
    unfinished.close()
    assert cleaned == [True]


# --- over an ASGI peer: the server's send called directly -------------------------------


class ScriptedServer:
    """An ASGI server's ``receive`` and ``send`` for one WebSocket: records the messages it is
    sent; a send raises ``fail_with`` (at once, or after waiting for ``gate`` when set)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []
        self.fail_with: Exception | None = None
        self.gate: anyio.Event | None = None
        self.gone = anyio.Event()
        self.connected = False

    async def receive(self) -> dict[str, object]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        await self.gone.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: dict[str, object]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None and message["type"] == "websocket.send":
            raise self.fail_with
        self.messages.append(message)

    def texts(self) -> list[str]:
        return [str(m["text"]) for m in self.messages if m["type"] == "websocket.send"]


class ServerGone(Exception):
    """What the scripted server raises once its client has gone (as uvicorn's ``ClientDisconnected``)."""


async def serve_over_asgi(server: ScriptedServer, hub: Hub, ended: anyio.Event) -> Connection:
    peer = AsgiWebSocketPeer(server.receive, server.send, gone=(ServerGone,))
    await peer.accept()
    connection = Connection(
        hub, TransportSettings(), IdentityResolver(hub.identities, None), peer, RequestInfo({}), "s"
    )

    async def run() -> None:
        try:
            await connection.run(OWNER)
        finally:
            ended.set()

    asyncio.get_running_loop().create_task(run())
    with anyio.fail_after(PATIENCE):
        while len(server.texts()) < 2:  # connection and snapshot
            await anyio.sleep(0.001)
    return connection


@pytest.mark.anyio
async def test_an_asgi_peers_message_goes_to_the_servers_send_on_the_publishers_stack() -> None:
    server, ended = ScriptedServer(), anyio.Event()
    async with Hub(MemoryBackend(), secret=SECRET) as hub:
        await serve_over_asgi(server, hub, ended)
        await hub.registry.publish(OWNER, "taskProgress", "t", 1, b'{"id":"t"}')
        assert server.messages[-1] == {
            "type": "websocket.send",
            "text": '{"type":"taskProgress","seq":1,"task":{"id":"t"}}',
        }
        server.gone.set()
        with anyio.fail_after(PATIENCE):
            await ended.wait()


@pytest.mark.anyio
@pytest.mark.parametrize("waits", [False, True], ids=["at-once", "after-waiting"])
async def test_an_asgi_servers_gone_error_ends_the_connection_quietly(
    waits: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The server's own error for a client that went (not translated by the peer's ``send``
    # on this path) ends the connection as ``PeerGone`` does: no 1011, nothing logged.
    server, ended = ScriptedServer(), anyio.Event()
    async with Hub(MemoryBackend(), secret=SECRET) as hub:
        await serve_over_asgi(server, hub, ended)
        server.fail_with = ServerGone()
        if waits:
            server.gate = gate = anyio.Event()
        await hub.registry.publish(OWNER, "taskProgress", "t", 1, b"{}")  # does not raise
        if waits:
            gate.set()
        with anyio.fail_after(PATIENCE):
            await ended.wait()
        assert not [m for m in server.messages if m["type"] == "websocket.close"]
        assert "a connection failed" not in caplog.text
        assert hub.registry.statistics().connections == 0


@pytest.mark.anyio
async def test_an_asgi_send_that_returns_another_awaitable_is_awaited() -> None:
    server = ScriptedServer()
    sent: list[dict[str, object]] = []

    def send(message: dict[str, object]) -> asyncio.Future[None]:  # not a coroutine function
        sent.append(message)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    server.send = send  # type: ignore[assignment,method-assign]
    async with Hub(MemoryBackend(), secret=SECRET) as hub:
        peer = AsgiWebSocketPeer(server.receive, send)
        await peer.accept()
        connection = Connection(
            hub, TransportSettings(), IdentityResolver(hub.identities, None), peer, RequestInfo({}), "s"
        )
        task = asyncio.get_running_loop().create_task(connection.run(OWNER))
        with anyio.fail_after(PATIENCE):
            while len(sent) < 3:  # accept, connection and snapshot
                await anyio.sleep(0.001)
        await hub.registry.publish(OWNER, "taskProgress", "t", 1, b"{}")
        assert sent[-1]["text"] == '{"type":"taskProgress","seq":1,"task":{}}'
        server.gone.set()
        with anyio.fail_after(PATIENCE):
            await task


# --- what a peer declares (``Peer``): read, never guessed ---------------------------------


class DeclaringPeer(ScriptedPeer):
    """A scripted peer that declares an ASGI ``send`` of its own beside its ``send``, and the
    errors that send raises for a client that went."""

    def __init__(self, gone_errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.asgi_sent: list[dict[str, str]] = []
        self.asgi_fail_with: Exception | None = None
        self.closed: list[int] = []
        self.asgi_send = self._server_send
        self.gone_errors = gone_errors

    async def _server_send(self, message: dict[str, str]) -> None:
        if self.asgi_fail_with is not None:
            raise self.asgi_fail_with
        self.asgi_sent.append(message)

    async def close(self, code: int, reason: str = "") -> None:
        self.closed.append(code)


class WriterOnlyPeer(ScriptedPeer):
    sends_inline = False  # as PeerDefaults declares


async def run_connection(hub: Hub, peer: ScriptedPeer, ended: anyio.Event) -> None:
    connection = Connection(
        hub, TransportSettings(), IdentityResolver(hub.identities, None), peer, RequestInfo({}), "s"
    )

    async def run() -> None:
        try:
            await connection.run(OWNER)
        finally:
            ended.set()

    asyncio.get_running_loop().create_task(run())


async def wait_for(predicate: Any) -> None:
    with anyio.fail_after(PATIENCE):
        while not predicate():
            await anyio.sleep(0.001)


@pytest.mark.anyio
async def test_a_peer_that_declares_it_sends_not_inline_is_sent_to_by_the_writer() -> None:
    peer, ended = WriterOnlyPeer(), anyio.Event()
    async with Hub(MemoryBackend(), secret=SECRET) as hub:
        await run_connection(hub, peer, ended)
        await wait_for(lambda: len(peer.sent) >= 2)  # connection and snapshot
        await hub.registry.publish(OWNER, "taskProgress", "t", 1, b"{}")
        assert len(peer.sent) == 2  # not on the publisher's stack
        await wait_for(lambda: len(peer.sent) == 3)
        peer.gone.set()
        with anyio.fail_after(PATIENCE):
            await ended.wait()


@pytest.mark.anyio
async def test_a_peer_that_declares_an_asgi_send_is_sent_to_through_it() -> None:
    peer, ended = DeclaringPeer(gone_errors=()), anyio.Event()
    async with Hub(MemoryBackend(), secret=SECRET) as hub:
        await run_connection(hub, peer, ended)
        await wait_for(lambda: len(peer.asgi_sent) >= 2)  # connection and snapshot
        await hub.registry.publish(OWNER, "taskProgress", "t", 1, b'{"id":"t"}')
        assert peer.asgi_sent[-1] == {
            "type": "websocket.send",
            "text": '{"type":"taskProgress","seq":1,"task":{"id":"t"}}',
        }
        assert peer.sent == []  # its own send, which the ASGI send stands in for, was not called
        peer.gone.set()
        with anyio.fail_after(PATIENCE):
            await ended.wait()


class ServerError(Exception):
    """What the declaring peer's ASGI send raises."""


@pytest.mark.anyio
@pytest.mark.parametrize("declared", [True, False], ids=["declared-gone", "not-declared"])
async def test_the_errors_a_peer_declares_gone_end_its_connection_quietly(
    declared: bool, caplog: pytest.LogCaptureFixture
) -> None:
    peer, ended = DeclaringPeer(gone_errors=(ServerError,) if declared else ()), anyio.Event()
    async with Hub(MemoryBackend(), secret=SECRET) as hub:
        await run_connection(hub, peer, ended)
        await wait_for(lambda: len(peer.asgi_sent) >= 2)
        peer.asgi_fail_with = ServerError()
        await hub.registry.publish(OWNER, "taskProgress", "t", 1, b"{}")  # does not raise
        with anyio.fail_after(PATIENCE):
            await ended.wait()
    if declared:  # the client went: nothing to log, nobody to close on
        assert peer.closed == []
        assert "a connection failed" not in caplog.text
    else:  # an error the peer did not declare is a failure
        assert peer.closed == [1011]
        assert "a connection failed" in caplog.text


@pytest.mark.anyio
async def test_a_peer_that_declares_nothing_is_refused_with_the_fix() -> None:
    class Undeclared:
        async def accept(self) -> None:
            pass

        async def receive(self) -> str:
            raise PeerGone

        async def send(self, text: str) -> None:
            pass

        async def close(self, code: int, reason: str = "") -> None:
            pass

    async with Hub(MemoryBackend(), secret=SECRET) as hub:
        with pytest.raises(TypeError, match=r"Undeclared does not declare .*PeerDefaults"):
            Connection(
                hub,
                TransportSettings(),
                IdentityResolver(hub.identities, None),
                Undeclared(),  # type: ignore[arg-type]
                RequestInfo({}),
                "s",
            )


def test_the_defaults_declare_every_message_sent_through_send_by_a_writer() -> None:
    assert (PeerDefaults.sends_inline, PeerDefaults.asgi_send, PeerDefaults.gone_errors) == (False, None, ())
