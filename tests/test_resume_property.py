"""Property: what a client sees across disconnects and resumes is its identity's sequence.

For any interleaving of published events and reconnects (resuming after the last seq seen,
or starting afresh), on both backends: a connection that resumes within the history gets
exactly the missed events (no gap, no duplicate); one that resumes from beyond it gets a
snapshot marked ``recovered: false`` at the current seq, and is gapless from there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progressq import Hub, MemoryBackend
from progressq.contracts import Backend
from progressq.transport import PeerDefaults, PeerGone, RequestInfo, TransportSettings
from progressq.transport._connection import Connection
from progressq.transport._identity import IdentityResolver
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, redis_answers
from tests.waiting import PATIENCE

HISTORY = 8
SLACK = 200  # a Redis history keeps "at least" HISTORY events: it may keep this many more

steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 12)),
        st.tuples(st.just("reconnect"), st.sampled_from(["resume", "fresh"])),
    ),
    min_size=1,
    max_size=12,
)


class FakePeer(PeerDefaults):
    def __init__(self) -> None:
        self.inbound_send, self.inbound = anyio.create_memory_object_stream[str](100)
        self.sent: list[dict[str, Any]] = []
        self.closed: int | None = None
        self.arrived = anyio.Event()

    async def accept(self) -> None:
        pass

    async def receive(self) -> str | bytes:
        try:
            return await self.inbound.receive()
        except anyio.EndOfStream:
            raise PeerGone from None

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.arrived.set()

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = code

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(PATIENCE):
            while len(self.sent) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()


@asynccontextmanager
async def opened(kind: str) -> AsyncIterator[Hub]:
    prefix = new_prefix("resume")
    backend: Backend
    if kind == "memory":
        backend = MemoryBackend(history_size=HISTORY)
    else:
        from progressq.backends.redis import RedisBackend

        backend = RedisBackend.from_url(REDIS_URL, prefix=prefix, history_size=HISTORY)
    try:
        async with Hub(backend, secret="property-secret-0123456789", concurrency=0) as hub:
            yield hub
    finally:
        if kind == "redis":
            delete_prefix(prefix)


class Client:
    """Follows one identity the way a browser would, and checks what it is sent."""

    def __init__(self, hub: Hub, identity: str) -> None:
        self.hub = hub
        self.identity = identity
        self.last_seq = 0
        self.settings = TransportSettings()
        self.resolver = IdentityResolver(hub.identities, None)

    @asynccontextmanager
    async def connected(self, mode: str) -> AsyncIterator[FakePeer]:
        peer = FakePeer()
        socket_id = self.hub.identities.mint()
        connection = Connection(self.hub, self.settings, self.resolver, peer, RequestInfo(headers={}), socket_id)
        async with anyio.create_task_group() as group:
            group.start_soon(connection.run, socket_id)
            await peer.wait_for(2)  # its own connection + snapshot
            resume: dict[str, Any] = {"type": "resume", "clientId": self.identity}
            if mode == "resume":
                resume["lastSeq"] = self.last_seq
            await peer.inbound_send.send(json.dumps(resume))
            await peer.wait_for(3)
            answer = peer.sent[2]
            assert answer["type"] == "connection"
            assert answer["clientId"] == self.identity
            current = await self.hub.registry.current_seq(self.identity)
            if answer["recovered"]:
                assert mode == "resume"
                assert current - self.last_seq <= HISTORY + SLACK
                await peer.wait_for(3 + current - self.last_seq)
                self.take(peer.sent[3:])
            else:
                assert mode == "fresh" or current - self.last_seq > HISTORY, "history held it: must recover"
                await peer.wait_for(4)
                snapshot = peer.sent[3]
                assert snapshot["type"] == "snapshot"
                assert snapshot["recovered"] is False
                assert snapshot["seq"] == current
                self.last_seq = current
                self.take(peer.sent[4:])
            self.peer = peer
            yield peer
            await peer.inbound_send.aclose()
        peer.inbound.close()

    def take(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            assert message["type"] == "taskProgress"
            assert message["seq"] == self.last_seq + 1, "no gap, no duplicate"
            self.last_seq = message["seq"]

    async def catch_up(self, peer: FakePeer, seen: int) -> int:
        current = await self.hub.registry.current_seq(self.identity)
        await peer.wait_for(seen + current - self.last_seq)
        self.take(peer.sent[seen:])
        return len(peer.sent)


async def play(kind: str, script: list[tuple[str, Any]]) -> None:
    async with opened(kind) as hub:
        client = Client(hub, hub.identities.mint())
        published = 0
        peer_cm = None
        seen = 0
        for step, argument in script:
            if step == "publish":
                for _ in range(argument):
                    published += 1
                    await hub.registry.publish(client.identity, "taskProgress", "t", published, b'{"n":1}')
                if peer_cm is not None:
                    seen = await client.catch_up(client.peer, seen)
            else:
                if peer_cm is not None:
                    await peer_cm.__aexit__(None, None, None)
                peer_cm = client.connected(argument)
                await peer_cm.__aenter__()
                seen = len(client.peer.sent)
        if peer_cm is not None:
            await peer_cm.__aexit__(None, None, None)
        assert await hub.registry.current_seq(client.identity) == published


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_what_a_client_sees_is_its_sequence(kind: str) -> None:
    if kind == "redis" and not redis_answers():
        pytest.skip("no Redis answers")

    @settings(max_examples=60 if kind == "memory" else 25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(script=steps)
    def check(script: list[tuple[str, Any]]) -> None:
        anyio.run(play, kind, script)

    check()
