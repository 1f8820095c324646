"""A local Redis Cluster for the benchmarks: three masters, no replicas, of the machine's
``redis-server``, on free ports of 7100-7199, in a temporary directory of its own.

    with local_cluster() as cluster:   # raises ClusterUnavailable if it cannot start
        cluster.url                    # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
        cluster.cpu_seconds()          # the masters' CPU time so far
        cluster.flush()                # empty every master between rounds

Its processes are stopped (exactly those, by the handles kept when they were started) when
the block ends, also on Ctrl-C or SIGTERM. A port is taken when both it and its cluster bus
port (10000 higher) are free; ports are chosen and bound under a file lock shared with the
project's tests, so a benchmark and a test session running side by side never pick the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from _common import cpu_seconds

FIRST_PORT = 7100
LAST_PORT = 7199
BUS_OFFSET = 10_000
PATIENCE = 60.0  # a busy 2-core machine may take a while to start and join three nodes
_LOCK_FILE = Path(tempfile.gettempdir()) / "progressq-test-cluster-ports.lock"


class ClusterUnavailable(RuntimeError):
    """The local cluster cannot run here (no redis-server or redis-cli, no free ports)."""


def missing_tools() -> str | None:
    """Why a local cluster cannot start on this machine, or None when it can."""
    absent = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if absent:
        return f"{' and '.join(absent)} not found on PATH (a local Redis Cluster needs both, Redis 7.0+)"
    return None


def _free(port: int) -> bool:
    for candidate in (port, port + BUS_OFFSET):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


@contextlib.contextmanager
def _port_lock() -> Iterator[None]:
    with open(_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cli(port: int, *command: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *command],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout if done.returncode == 0 else ""


class LocalCluster:
    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        reason = missing_tools()
        if reason:
            raise ClusterUnavailable(reason)
        self._dir = tempfile.mkdtemp(prefix="progressq-bench-cluster-")
        with _port_lock():
            self.ports = [port for port in range(FIRST_PORT, LAST_PORT + 1) if _free(port)][: self.masters]
            if len(self.ports) < self.masters:
                raise ClusterUnavailable(f"fewer than {self.masters} free ports in {FIRST_PORT}-{LAST_PORT}")
            for port in self.ports:
                self._start_node(port)
            self._wait(lambda: all(_cli(p, "PING").strip() == "PONG" for p in self.ports), "the nodes to answer")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=PATIENCE,
        )
        every_node_ok = lambda: all("cluster_state:ok" in _cli(p, "CLUSTER", "INFO") for p in self.ports)  # noqa: E731
        self._wait(every_node_ok, "cluster_state:ok on every node")

    def _start_node(self, port: int) -> None:
        assert self._dir is not None
        node_dir = Path(self._dir) / str(port)
        node_dir.mkdir()
        command = [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(node_dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(node_dir / "redis.log"),
        ]  # fmt: skip
        # its own session: a Ctrl-C reaches the benchmark, which stops the nodes itself
        self.processes[port] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while not condition():
            dead = [port for port, process in self.processes.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = f" (node logs in {self._dir})" if dead else ""
                raise ClusterUnavailable(f"local cluster: gave up waiting for {what}{logs}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """The masters' CPU time so far (from /proc, the processes this cluster started)."""
        return sum(cpu_seconds(process.pid) for process in self.processes.values())

    def flush(self) -> None:
        """Empty every master (this cluster's own, no one else's)."""
        for port in self.ports:
            _cli(port, "FLUSHALL")

    def stop(self) -> None:
        """Stop exactly the processes this cluster started."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def local_cluster(masters: int = 3) -> Iterator[LocalCluster]:
    """A started cluster for the block; its processes stopped when the block ends, however
    it ends (SIGTERM is turned into KeyboardInterrupt meanwhile, so that it does too)."""
    cluster = LocalCluster(masters)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)
