"""The pub/sub reader (``_wire``, ``_pubsub``) against a real Redis: replies split across
reads, many in one read, a connection cut in the middle of a message, confirmations, a
message nobody here listens to; and on Redis Cluster, ``smessage`` and an unsolicited
``sunsubscribe``.

Where the bytes must arrive in a given shape, a small TCP relay sits between the reader and
the real Redis and re-cuts what Redis sends (a few bytes at a time, or everything held back
and sent at once, or cut off mid-message)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from progressq._conformance_support import RecordingSink
from progressq.backends.redis import RedisBackend
from progressq.backends.redis._cluster import _SlotSource
from progressq.backends.redis._pubsub import _PubSub, _Source, _Subscription
from tests.redis_cluster_support import SharedCluster, delete_cluster_prefix
from tests.redis_support import (
    REDIS_URL,
    free_port,
    new_prefix,
    private_redis,
    redis_answers,
    redis_backends,
    require_redis,
)
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


class Collecting(_Subscription):
    def __init__(self) -> None:
        self.confirmations = 0
        self.messages: list[bytes] = []
        self.changed = asyncio.Event()

    async def confirmed(self) -> None:
        self.confirmations += 1
        self.changed.set()

    async def message(self, data: bytes) -> None:
        self.messages.append(data)
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(PATIENCE):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


class Relay:
    """A TCP relay to the real Redis whose Redis-to-client side can be re-cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"  # "trickle": 3 bytes a write; "hold": kept until release()
        self.held = bytearray()
        # close a subscribed connection's client side after this many more bytes
        self.cut_after: int | None = None
        self.clients: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.clients.append(client_writer)

        subscriber = False  # this connection carries a subscription (the others are commands)

        async def upstream() -> None:
            nonlocal subscriber
            while data := await client_reader.read(65536):
                subscriber = subscriber or b"SUBSCRIBE" in data
                redis_writer.write(data)
                await redis_writer.drain()
            redis_writer.close()

        async def downstream() -> None:
            while data := await redis_reader.read(65536):
                if self.cut_after is not None and subscriber:
                    client_writer.write(data[: self.cut_after])
                    await client_writer.drain()
                    self.cut_after = None
                    client_writer.transport.abort()
                    redis_writer.close()
                    return
                if self.mode == "trickle":
                    for at in range(0, len(data), 3):
                        client_writer.write(data[at : at + 3])
                        await client_writer.drain()
                        await asyncio.sleep(0.001)  # each piece its own segment, likely its own read
                elif self.mode == "hold":
                    self.held += data
                else:
                    client_writer.write(data)
                    await client_writer.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(upstream(), downstream())

    def release(self) -> None:
        """Send what was held back in one write, and pass everything on from now on."""
        for writer in self.clients:
            if not writer.is_closing():
                writer.write(bytes(self.held))
        self.held.clear()
        self.mode = "pass"


@contextlib.asynccontextmanager
async def relayed() -> AsyncIterator[tuple[Relay, str]]:
    require_redis()
    target = Redis.from_url(REDIS_URL)
    kwargs = target.connection_pool.connection_kwargs
    await target.aclose()
    relay = Relay(int(kwargs.get("port", 6379)))
    server = await relay.start()
    try:
        yield relay, f"redis://127.0.0.1:{relay.port}/{kwargs.get('db', 0)}"
    finally:
        server.close()
        for writer in relay.clients:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def reading(url: str) -> AsyncIterator[_PubSub]:
    client = Redis.from_url(url)
    pubsub = _PubSub(_Source(client))
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(pubsub.run)
            yield pubsub
            group.cancel_scope.cancel()
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_replies_split_across_reads_are_put_together() -> None:
    channel = new_prefix("split")
    payloads = [b"%d:" % n + b"x" * (n * 7 % 50) for n in range(40)]
    async with relayed() as (relay, url), reading(url) as pubsub, Redis.from_url(REDIS_URL) as publisher:
        sub = Collecting()
        relay.mode = "trickle"
        await pubsub.subscribe(channel, sub)
        await sub.until(lambda: sub.confirmations == 1)
        for payload in payloads:
            await publisher.publish(channel, payload)
        await sub.until(lambda: len(sub.messages) == 40)
        assert sub.messages == payloads
        wire = pubsub._wire
        assert wire is not None
        assert wire.reads > 40  # the pieces did arrive in more reads than there were replies


async def test_many_replies_in_one_read_are_all_taken() -> None:
    channel = new_prefix("many")
    async with relayed() as (relay, url), reading(url) as pubsub, Redis.from_url(REDIS_URL) as publisher:
        sub = Collecting()
        await pubsub.subscribe(channel, sub)
        await sub.until(lambda: sub.confirmations == 1)
        relay.mode = "hold"
        for n in range(500):
            await publisher.publish(channel, b"m%d" % n)
        wire = pubsub._wire
        assert wire is not None
        reads = wire.reads
        relay.release()
        await sub.until(lambda: len(sub.messages) == 500)
        assert sub.messages == [b"m%d" % n for n in range(500)]
        assert wire.reads - reads < 50  # ~64 KB held back arrive in a few reads, not 500


async def test_a_connection_cut_mid_message_loses_no_event() -> None:
    """The registry's subscriber over a connection cut in the middle of a message: the reader
    connects again, and what was missed comes from the history, in order, once each."""
    with redis_backends("cut") as make:
        async with (
            relayed() as (relay, url),
            make(url=url) as listener,
            make() as publisher,
        ):
            sink = RecordingSink()
            await listener.registry.attach("alice", sink)
            for n in range(1, 6):
                await publisher.registry.publish("alice", "taskProgress", "t", n, b'{"n":%d}' % n)
            await sink.wait_count(5)
            relay.cut_after = 20  # the next message's first 20 bytes, then the connection drops
            for n in range(6, 21):
                await publisher.registry.publish("alice", "taskProgress", "t", n, b'{"n":%d}' % n)
            await sink.wait_count(20)
            assert sink.seqs == list(range(1, 21))
            assert listener._pubsubs[0].connections >= 1


async def test_an_unexpected_error_while_connecting_again_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error the client library did not map, met while the lost connection is made again,
    is an outage like any other (tried again after the backoff), not the end of listening."""
    channel = new_prefix("unmapped")
    async with reading(REDIS_URL) as pubsub, Redis.from_url(REDIS_URL) as publisher:
        sub = Collecting()
        await pubsub.subscribe(channel, sub)
        await sub.until(lambda: sub.confirmations == 1)
        source = pubsub._source
        open_for_real = source.open
        failures: list[str] = []

        async def fails_once() -> Any:
            if not failures:
                failures.append("raised")
                raise RuntimeError("a client library's own bug")
            return await open_for_real()

        monkeypatch.setattr(source, "open", fails_once)
        wire = pubsub._wire
        assert wire is not None
        wire.abort("cut by the test")
        await sub.until(lambda: sub.confirmations == 2)  # subscribed again on a new connection
        await publisher.publish(channel, b"after")
        await sub.until(lambda: sub.messages == [b"after"])
        assert failures == ["raised"]


async def test_a_subscription_is_confirmed_and_a_message_nobody_wants_is_passed_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_redis()
    wanted, unwanted = new_prefix("wanted"), new_prefix("unwanted")
    async with reading(REDIS_URL) as pubsub, Redis.from_url(REDIS_URL) as publisher:
        sub = Collecting()
        await pubsub.subscribe(wanted, sub)
        await sub.until(lambda: sub.confirmations == 1)
        # a channel the connection carries with no subscription behind it (as one just
        # unsubscribed whose messages are still on their way)
        wire = pubsub._wire
        assert wire is not None
        async with pubsub._lock:
            await wire.send(b"SUBSCRIBE", unwanted.encode())
        with caplog.at_level(logging.WARNING, logger="progressq"):
            with anyio.fail_after(PATIENCE):
                while await publisher.publish(unwanted, b"nobody") == 0:
                    await anyio.sleep(0.01)
            await publisher.publish(wanted, b"somebody")
            await sub.until(lambda: len(sub.messages) == 1)
        assert sub.messages == [b"somebody"]
        assert sub.confirmations == 1
        assert pubsub.connections == 0
        assert not pubsub.broken
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.redis_cluster
async def test_sharded_messages_and_an_unsolicited_sunsubscribe(redis_cluster: SharedCluster) -> None:
    """``smessage`` reaches its subscription; a ``sunsubscribe`` the reader did not ask for
    (what Redis sends when the slot moves) makes the connection again on the slot's master,
    subscribed again and confirmed again."""
    prefix = new_prefix("sharded")
    channel = f"{{{prefix}}}:events"
    ports = [int(node.rpartition(":")[2]) for node in redis_cluster.url.split("//")[1].split(",")]
    client = RedisCluster(host="127.0.0.1", port=ports[0])
    pubsub = _PubSub(_SlotSource(client, f"{{{prefix}}}:marker"))
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(pubsub.run)
            sub = Collecting()
            await pubsub.subscribe(channel, sub)
            await sub.until(lambda: sub.confirmations == 1)
            await client.execute_command("SPUBLISH", channel, b"first", target_nodes=client.get_node_from_key(channel))
            await sub.until(lambda: len(sub.messages) == 1)
            wire = pubsub._wire
            assert wire is not None
            async with pubsub._lock:  # as if Redis had dropped the channel: its slot moved
                await wire.send(b"SUNSUBSCRIBE", channel.encode())
            await sub.until(lambda: sub.confirmations == 2)
            assert pubsub.connections == 1
            await client.execute_command("SPUBLISH", channel, b"second", target_nodes=client.get_node_from_key(channel))
            await sub.until(lambda: len(sub.messages) == 2)
            assert sub.messages == [b"first", b"second"]
            group.cancel_scope.cancel()
    finally:
        await pubsub.aclose()
        await client.aclose()
        delete_cluster_prefix(redis_cluster.url, prefix)


@pytest.fixture
def tls_redis_with_a_user(tmp_path: Path) -> Iterator[str]:
    """A redis-server of the test's own that speaks only TLS and lets in only a user with a
    password: the URL to reach it."""
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        pytest.skip("needs redis-server and openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    request = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    subprocess.run([*request, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    command = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    command += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    command += ["--user", "default", "off", "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://alice:s3cret@127.0.0.1:{port}/0?ssl_cert_reqs=none"
    try:
        deadline = time.monotonic() + PATIENCE
        while not redis_answers(url):
            if server.poll() is not None:
                pytest.skip("this redis-server does not speak TLS")
            if time.monotonic() > deadline:
                raise RuntimeError("the TLS redis-server did not start")
            time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(10)


async def test_tls_and_a_password_through_a_lost_connection(tls_redis_with_a_user: str) -> None:
    """The reader's connection is opened as the client's are: TLS and ``user:password`` from
    the URL, on the first connection and on the one made after it was lost."""
    url = tls_redis_with_a_user
    async with RedisBackend.from_url(url, prefix="tls") as listener, RedisBackend.from_url(url, prefix="tls") as other:
        sink = RecordingSink()
        await listener.registry.attach("alice", sink)
        for n in range(1, 4):
            await other.registry.publish("alice", "taskProgress", "t", n, b'{"n":%d}' % n)
        await sink.wait_count(3)
        assert await other.client.execute_command("CLIENT KILL TYPE pubsub") >= 1
        with anyio.fail_after(PATIENCE):
            while listener._pubsubs[0].connections < 1 or listener._pubsubs[0].broken:
                await anyio.sleep(0.05)
        for n in range(4, 7):
            await other.registry.publish("alice", "taskProgress", "t", n, b'{"n":%d}' % n)
        await sink.wait_count(6)
        assert sink.seqs == [1, 2, 3, 4, 5, 6]


async def test_a_silent_connection_is_pinged_then_dropped_and_made_again() -> None:
    """A Redis that stops answering without closing anything (here: stopped with SIGSTOP) is
    found out by the reader's ping, not by a timeout on every read; once Redis answers again
    the connection is made again and nothing is lost."""
    with private_redis() as server:
        assert server.process is not None
        async with (
            RedisBackend.from_url(server.url, prefix="silent") as listener,
            RedisBackend.from_url(server.url, prefix="silent") as other,
        ):
            sink = RecordingSink()
            await listener.registry.attach("alice", sink)
            await other.registry.publish("alice", "taskProgress", "t", 1, b'{"n":1}')
            await sink.wait_count(1)
            pubsub = listener._pubsubs[0]
            server.process.send_signal(signal.SIGSTOP)
            try:
                with anyio.fail_after(PATIENCE):
                    while not pubsub.broken:
                        await anyio.sleep(0.1)
            finally:
                server.process.send_signal(signal.SIGCONT)
            await other.registry.publish("alice", "taskProgress", "t", 2, b'{"n":2}')
            with anyio.fail_after(PATIENCE):
                while pubsub.broken:
                    await anyio.sleep(0.1)
            await other.registry.publish("alice", "taskProgress", "t", 3, b'{"n":3}')
            await sink.wait_count(3)
            assert sink.seqs == [1, 2, 3]
