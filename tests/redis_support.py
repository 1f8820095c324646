"""Helpers for tests against a real Redis: availability, unique key prefixes, cleanup."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tests.waiting import PATIENCE

if TYPE_CHECKING:
    from progressq.backends.redis import RedisBackend

REDIS_URL = os.environ.get("PROGRESSQ_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_answers(url: str = REDIS_URL) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def require_redis() -> None:
    if not redis_answers():
        pytest.skip(f"no Redis answers at {REDIS_URL} (start one: redis-server --port 6379)")


def new_prefix(name: str = "t") -> str:
    return f"pqtest:{name}:{uuid.uuid4().hex[:12]}"


def delete_prefix(prefix: str, url: str = REDIS_URL) -> int:
    """Delete every key under ``prefix:`` and its shards' ``{prefix:N}:`` (and only those)."""
    with redis.Redis.from_url(url) as client:
        keys = [key for match in (f"{prefix}:*", f"{{{prefix}:*") for key in client.scan_iter(match=match, count=500)]
        if keys:
            client.delete(*keys)
        return len(keys)


@contextlib.contextmanager
def prefixed(name: str = "t") -> Iterator[str]:
    require_redis()
    prefix = new_prefix(name)
    try:
        yield prefix
    finally:
        delete_prefix(prefix)


class MakeRedisBackend:
    """Makes ``RedisBackend``s under one ``prefix`` on the Redis at ``url``: what
    :func:`redis_backends` yields. Called with ``RedisBackend.from_url``'s options, which add
    to its defaults (an option given as None is left to ``RedisBackend``'s own default), and
    with ``url`` to reach the same Redis another way (through a relay, say)."""

    def __init__(self, prefix: str, url: str, defaults: dict[str, Any]) -> None:
        self.prefix = prefix
        self.url = url
        self._defaults = defaults

    def __call__(self, *, url: str | None = None, **options: Any) -> RedisBackend:
        from progressq.backends.redis import RedisBackend

        given = {option: value for option, value in {**self._defaults, **options}.items() if value is not None}
        return RedisBackend.from_url(url or self.url, prefix=self.prefix, **given)


@contextlib.contextmanager
def redis_backends(name: str, *, url: str = REDIS_URL, **defaults: Any) -> Iterator[MakeRedisBackend]:
    """Backends on the Redis at ``url`` (the shared one, or a Redis Cluster's
    ``redis+cluster://`` URL), all under one fresh prefix named after ``name``; every key of
    that prefix (its shards' too) is deleted afterwards. What a test's backend fixture does."""
    cluster = url.startswith("redis+cluster://")
    if not cluster:
        require_redis()
    make = MakeRedisBackend(new_prefix(name), url, defaults)
    try:
        yield make
    finally:
        if cluster:
            from tests.redis_cluster_support import delete_cluster_prefix

            delete_cluster_prefix(url, make.prefix)
        else:
            delete_prefix(make.prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of our own (for tests that kill connections or the server itself).

    With ``data_dir`` it keeps its data in an append-only file synced on every write, so a
    killed and restarted server comes back with everything it had acknowledged.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.data_dir is None:
            command += ["--appendonly", "no"]
        else:
            command += ["--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + PATIENCE
        while not redis_answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server goes away without a word."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@contextlib.contextmanager
def private_redis(data_dir: Path | None = None) -> Iterator[PrivateRedis]:
    server = PrivateRedis(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
