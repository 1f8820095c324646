"""A local Redis Cluster for tests: three masters and three replicas of the machine's
``redis-server``, on spare ports, in a temporary directory; stopped (only those processes)
when done.

Ports come from 7100-7199 (their cluster bus ports are 10000 higher): a port is taken when
both it and its bus port are free, chosen and bound under a file lock, so that test sessions
running side by side (the suite's worker processes, the two virtualenvs) never pick the same.

A node killed mid-test keeps its ports taken until its cluster stops (a socket listens on
each and resets every connection at once, as a dead node's host would refuse it). Were they
free, another session's cluster could start a node there, and the killed node's peers would
meet a stranger at its address: they mark the dead master ``noaddr`` (port 0), so that it is
never failed over and clients are sent to ``127.0.0.1:0``, and its replica syncs with the
stranger, dropping its data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.waiting import PATIENCE

FIRST_PORT = 7100
LAST_PORT = 7199
_BUS_OFFSET = 10_000
_LOCK_FILE = Path(tempfile.gettempdir()) / "progressq-test-cluster-ports.lock"


def _free(port: int) -> bool:
    for candidate in (port, port + _BUS_OFFSET):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


class _DeadPort:
    """A killed node's port, kept from every other process: a listening socket, so that
    neither a Redis nor :func:`_free` can bind it (its dead node's connections in TIME_WAIT
    would keep a socket without ``SO_REUSEADDR`` from binding it, and one with it would not
    keep out the others), whose connections are reset as soon as they are made: a caller
    meets a dead node, never a stranger, and never waits."""

    def __init__(self, port: int) -> None:
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen(64)
        self._socket.settimeout(0.1)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._reset_each, name=f"dead port {port}", daemon=True)
        self._thread.start()

    def _reset_each(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # closed with a linger of zero: a reset, as from a host with nothing on the port
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(PATIENCE)
        self._socket.close()


@contextlib.contextmanager
def _port_lock() -> Iterator[None]:
    with open(_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _answers(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


class LocalCluster:
    """Three masters, each with one replica, of the machine's ``redis-server``.

    ``url`` is the backend's URL for it (``redis+cluster://127.0.0.1:PORT,...``).
    """

    def __init__(self, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._paused: set[int] = set()
        self._held: list[_DeadPort] = []  # the killed nodes' ports, kept from other clusters
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            pytest.skip("redis-server and redis-cli are needed for the Redis Cluster tests")
        self._dir = tempfile.mkdtemp(prefix="progressq-cluster-")
        count = self.masters * (1 + self.replicas)
        with _port_lock():
            self.ports = [port for port in range(FIRST_PORT, LAST_PORT + 1) if _free(port)][:count]
            if len(self.ports) < count:
                pytest.skip(f"fewer than {count} free ports in {FIRST_PORT}-{LAST_PORT} for a test cluster")
            for port in self.ports:
                self._start_node(binary, port)
            self._wait(lambda: all(_answers(port) for port in self.ports), "the nodes to answer")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=PATIENCE,
        )
        self.wait_until_ok()
        # a replica that has not synced with its master once cannot take its place
        self._wait(self._replicas_in_sync, "every replica to sync with its master")

    def _replicas_in_sync(self) -> bool:
        try:
            links = []
            for port in self.processes:
                with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as client:
                    info = client.info("replication")
                if info.get("role") == "slave":
                    links.append(info.get("master_link_status") == "up")
            return len(links) == self.masters * self.replicas and all(links)
        except (redis.RedisError, OSError):
            return False

    def _start_node(self, binary: str, port: int) -> None:
        assert self._dir is not None
        node_dir = Path(self._dir) / str(port)
        node_dir.mkdir()
        command = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(node_dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",  # replicas in sync at once, not after 5 s
            "--logfile", str(node_dir / "redis.log"),
        ]  # fmt: skip
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait(self, condition: object, what: str) -> None:
        assert callable(condition)
        deadline = time.monotonic() + PATIENCE
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"test cluster: gave up waiting for {what}")
            time.sleep(0.1)

    def _info(self, port: int) -> dict[str, str]:
        with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as client:
            text = client.execute_command("CLUSTER INFO")
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):  # parsed by the client already
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).split() if ":" in line)

    def _cluster_ok(self, ports: list[int]) -> bool:
        try:
            return all(self._info(port).get("cluster_state") == "ok" for port in ports)
        except (redis.RedisError, OSError):
            return False

    def wait_until_ok(self) -> None:
        """Until every live node says the cluster is ``ok`` and every slot has a master."""
        self._wait(lambda: self._cluster_ok(list(self.processes)), "cluster_state:ok on every node")

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key`` now."""
        for port in self.processes:
            try:
                with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as client:
                    slot = int(client.execute_command("CLUSTER KEYSLOT", key))
                    for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                        if int(start) <= slot <= int(end):
                            return int(master[1])
            except (redis.RedisError, OSError):
                continue
        raise RuntimeError(f"no live node knows the master of {key!r}")

    def kill(self, port: int) -> None:
        """SIGKILL one node: it goes away without a word (its replica, if it was a master,
        takes over once the others agree that it failed). Its ports stay taken until the
        cluster stops (see the module's docstring), taken over under the lock that other
        sessions choose ports under, so that none starts a node there meanwhile."""
        with _port_lock():
            process = self.processes.pop(port)
            process.send_signal(signal.SIGKILL)
            process.wait(PATIENCE)
            for held in (port, port + _BUS_OFFSET):
                self._held.append(_DeadPort(held))

    def wait_for_replicas_of(self, master: int) -> None:
        """Until the master's replicas have every write it took so far. Replication is
        asynchronous: a write its replica never got is lost when the replica takes over, and
        nothing marks the loss (docs/concepts/backends.md, "A master that fails"). A test of what
        the backend does about a failover waits for this before it kills the master, or a
        loaded machine that keeps the replica behind fails it for Redis's reason, not ours."""
        with redis.Redis(port=master, socket_connect_timeout=1, socket_timeout=2) as client:
            info = client.info("replication")
        target = int(info["master_repl_offset"])
        replicas = [int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]

        def caught_up() -> bool:
            try:
                for port in replicas:
                    with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as client:
                        if int(client.info("replication")["slave_repl_offset"]) < target:
                            return False
            except (redis.RedisError, OSError, KeyError):
                return False
            return bool(replicas)

        self._wait(caught_up, f"the replicas of {master} to have its writes")

    def pause(self, port: int) -> None:
        """SIGSTOP one node: it hangs, its connections open and unanswered (unlike a killed
        node, which loopback clients find refusing at once)."""
        self.processes[port].send_signal(signal.SIGSTOP)
        self._paused.add(port)

    def resume(self, port: int) -> None:
        """SIGCONT a paused node: it answers again, what it was sent meanwhile first."""
        self.processes[port].send_signal(signal.SIGCONT)
        self._paused.discard(port)

    def wait_for_failover(self, killed: int) -> None:
        """Until a replica serves the slots the killed master served, and every node agrees:
        every slot's master is a live node of this cluster (not the killed one, nor one
        that its peers no longer know the address of, shown with port 0)."""
        self.wait_until_ok()
        self._wait(self._masters_all_live, "a replica to take over")

    def _masters_all_live(self) -> bool:
        masters = self._master_ports()
        return bool(masters) and masters <= set(self.processes)

    def _master_ports(self) -> set[int]:
        for port in self.processes:
            try:
                with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2) as client:
                    return {int(master[1]) for _, _, master, *_ in client.execute_command("CLUSTER SLOTS")}
            except (redis.RedisError, OSError):
                continue
        return set()

    def stop(self) -> None:
        """Stop exactly the processes this cluster started."""
        for port in list(self._paused):
            self.resume(port)  # a stopped process would not see its SIGTERM
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes.clear()
        for held in self._held:
            held.close()
        self._held.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@contextlib.contextmanager
def local_cluster(**options: int) -> Iterator[LocalCluster]:
    cluster = LocalCluster(**options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def delete_cluster_prefix(url: str, prefix: str) -> int:
    """Delete every key of ``prefix`` (hash-tagged ``{prefix:N}:...`` and plain ``prefix:...``)
    on every master of the cluster at ``url``."""
    ports = [int(node.rpartition(":")[2]) for node in url.removeprefix("redis+cluster://").split(",")]
    deleted = 0
    with redis.RedisCluster(host="127.0.0.1", port=ports[0]) as client:
        for node in client.get_primaries():
            with redis.Redis(host=node.host, port=node.port) as node_client:
                for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
                    for key in list(node_client.scan_iter(match=pattern, count=500)):
                        deleted += int(node_client.delete(key))
    return deleted


class SharedCluster:
    """The test run's cluster, as its users see it: where it is."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)


@contextlib.contextmanager
def shared_cluster(folder: Path) -> Iterator[SharedCluster]:
    """One cluster for the whole test run, however many worker processes it has (pytest-xdist):
    the first to need it starts it, the last to be done with it stops it (its processes, by the
    ids recorded when they were started). ``folder`` is the run's own (the workers share it);
    a file lock in it keeps the count."""
    state_file = folder / "redis-cluster.json"

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        with open(folder / "redis-cluster.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    with locked():
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        if state is None:
            cluster = LocalCluster()
            cluster.start()
            state = {"ports": cluster.ports, "pids": [p.pid for p in cluster.processes.values()], "users": 0}
            state["dir"] = cluster._dir
            cluster._dir = None  # removed by whoever stops it
            _STARTED.update({p.pid: p for p in cluster.processes.values()})  # kept: waited for when stopped
        state["users"] += 1
        state_file.write_text(json.dumps(state))
    try:
        yield SharedCluster(state["ports"])
    finally:
        with locked():
            state = json.loads(state_file.read_text())
            state["users"] -= 1
            if state["users"] > 0:
                state_file.write_text(json.dumps(state))
            else:
                for pid in state["pids"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                for pid in state["pids"]:
                    _wait_gone(pid)
                if state.get("dir"):
                    shutil.rmtree(state["dir"], ignore_errors=True)
                state_file.unlink()


_STARTED: dict[int, subprocess.Popen[bytes]] = {}  # the shared cluster's processes this process started


def _wait_gone(pid: int) -> None:
    started = _STARTED.pop(pid, None)
    if started is not None:
        try:
            started.wait(10)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait(10)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
            if waited == pid:
                return
        except ChildProcessError:  # another process's child: wait until it is gone (or a zombie)
            try:
                if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                    return
            except (FileNotFoundError, ProcessLookupError):
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


__all__ = ("LocalCluster", "SharedCluster", "delete_cluster_prefix", "local_cluster", "shared_cluster")
