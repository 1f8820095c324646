"""The Redis backend on Redis Cluster: a master killed mid-run, sharded pub/sub, the URL and
the shards' keys. Against local clusters of the machine's redis-server (see
tests/redis_cluster_support.py)."""

from __future__ import annotations

import subprocess
from typing import Any

import anyio
import msgspec
import pytest
import redis

from progressq import Hub, TaskContext
from progressq._conformance_support import RecordingSink, check_task_events, gapless_from_one
from progressq.backends.redis import RedisBackend
from progressq.contracts import Event
from progressq.errors import ConfigurationError, TaskNotFound
from tests import redis_cluster_support
from tests.redis_cluster_support import SharedCluster, local_cluster
from tests.redis_support import new_prefix, redis_backends
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.redis_cluster, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


def _view(event: Event) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.json.decode(event.task_json)
    return view


def _final(events: list[Event]) -> dict[str, str]:
    """Each task's last status, as its owner saw it."""
    return {event.task_id: _view(event)["status"] for event in events}


async def _stored_status(hub: Hub, task_id: str, owner: str) -> str:
    """A task's stored status, for a failure's message: "missing" when the store has none."""
    try:
        return (await hub.get(task_id, owner=owner)).status
    except TaskNotFound:
        return "missing"


@pytest.mark.timeout(300)  # a cluster of its own, a failover, and tasks run again after it
async def test_a_master_killed_mid_run_loses_nothing() -> None:
    """One master dies (SIGKILL) while tasks of its shards are queued and running and their
    owners are attached in another process; its replica takes over. Every task still
    completes, and every owner sees each of its tasks end, once, with seqs without gaps."""
    with local_cluster(node_timeout_ms=1500) as cluster:
        prefix = new_prefix("failover")
        options: dict[str, Any] = {"prefix": prefix, "lease_timeout": 3.0}
        web = Hub(RedisBackend.from_url(cluster.url, **options), secret="failover-test-secret-01", concurrency=0)
        workers = Hub(
            RedisBackend.from_url(cluster.url, **options),
            secret="failover-test-secret-01",
            concurrency=6,
            progress_interval=0.0,
            max_running_per_owner=2,
        )
        for hub in (web, workers):

            @hub.task("steps")
            async def steps(ctx: TaskContext) -> None:
                for step in range(1, 16):
                    await anyio.sleep(0.1)
                    await ctx.report(step * 100 / 15, f"step {step}")

        owners = [f"owner-{n}" for n in range(8)]
        backend = web.backend
        assert isinstance(backend, RedisBackend)
        shards = {owner: backend._shards.of_owner(owner) for owner in owners}
        async with web, workers:
            sinks = {owner: RecordingSink() for owner in owners}
            for owner, sink in sinks.items():
                await web.registry.attach(owner, sink)
            ids = {owner: [(await web.submit("steps", owner=owner)).id for _ in range(3)] for owner in owners}
            # a master of a shard whose owner has a task running and more waiting
            victim = owners[0]
            await sinks[victim].wait_for(lambda events: any(_view(e)["progress"] > 20 for e in events))
            assert (await web.queue.statistics()).queued > 0
            killed = cluster.master_of(backend._shards.keys[shards[victim]].stream)
            cluster.wait_for_replicas_of(killed)  # (what it took up to here; the tasks are submitted)
            cluster.kill(killed)
            cluster.wait_for_failover(killed)
            for owner, sink in sinks.items():
                expected = set(ids[owner])
                try:
                    await sink.wait_for(
                        lambda events, expected=expected: (
                            {t for t, s in _final(events).items() if s == "completed"} >= expected
                        ),
                        PATIENCE * 2,
                    )
                except TimeoutError:
                    stored = {task_id: await _stored_status(web, task_id, owner) for task_id in ids[owner]}
                    raise AssertionError(
                        f"{owner} (shard {shards[owner]}, killed {killed}): seen {_final(sink.events)}, "
                        f"stored {stored}, seqs {sink.seqs}"
                    ) from None
            await anyio.sleep(0.5)  # nothing more comes
            # the victim's subscription moved to the master that serves its shard now
            channel = backend._shards.keys[shards[victim]].channel(victim)
            with redis.Redis(port=cluster.master_of(channel)) as node:
                assert channel.encode() in node.execute_command("PUBSUB SHARDCHANNELS")
            assert backend._pubsubs[shards[victim]].connections >= 1  # made again after the failover
            for owner, sink in sinks.items():
                assert gapless_from_one(sink.seqs), (owner, sink.seqs)
                assert set(_final(sink.events)) == set(ids[owner])
                check_task_events(sink.events)
            for owner in owners:
                for task_id in ids[owner]:
                    assert (await web.get(task_id, owner=owner)).status == "completed"
            statistics = await web.queue.statistics()
            assert (statistics.queued, statistics.running) == (0, 0)
        assert killed not in cluster.processes


@pytest.mark.timeout(120)
def test_a_killed_node_keeps_its_ports_from_other_clusters() -> None:
    """Until its cluster stops, a killed node's ports are taken: another test session's cluster
    cannot start a node there (its peers would take that stranger for the dead node, never fail
    it over, and its replica would sync with the stranger), and a connection there is refused
    at once, as by a dead host."""
    with local_cluster(masters=3, replicas=0) as cluster:
        killed = cluster.ports[0]
        cluster.kill(killed)
        for port in (killed, killed + 10_000):  # the node's, and its cluster bus's
            assert not redis_cluster_support._free(port)
        stranger = subprocess.run(
            ["redis-server", "--port", str(killed), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            capture_output=True,
            timeout=PATIENCE,
        )
        assert stranger.returncode != 0
        with pytest.raises(redis.ConnectionError), redis.Redis(port=killed, socket_timeout=PATIENCE) as client:
            client.ping()
        with redis.Redis(port=cluster.ports[1]) as client:
            assert client.ping()  # the live nodes are not disturbed
    assert redis_cluster_support._free(killed)


@pytest.mark.timeout(180)
async def test_a_cluster_client_error_while_pubsub_reconnects_is_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-failover, the lowest redis-py allowed fails a read with an ``AttributeError`` of its
    own (a connection that another call closed under it). Met while a shard's pub/sub
    connection is made again, it is an outage like any other: tried again after the backoff,
    and the owner's events still arrive, instead of the backend's listening ending."""
    with local_cluster(masters=3, replicas=0) as cluster:
        prefix = new_prefix("reconnect")
        async with RedisBackend.from_url(cluster.url, prefix=prefix) as backend:
            sink = RecordingSink()
            await backend.registry.attach("alice", sink)
            client = backend.client
            ask = client.exists
            failed: list[tuple[Any, ...]] = []

            async def fails_once(*keys: Any) -> Any:
                if not failed:
                    failed.append(keys)
                    raise AttributeError("'NoneType' object has no attribute 'writelines'")
                return await ask(*keys)

            monkeypatch.setattr(client, "exists", fails_once)
            node = client.get_node_from_key(backend._shards.keys[backend._shards.of_owner("alice")].marker)
            with redis.Redis(host=node.host, port=node.port) as admin:  # the shard's connection cut
                assert int(admin.execute_command("CLIENT KILL TYPE pubsub")) >= 1
            await backend.registry.publish("alice", "taskProgress", "t", 1, b'{"n":1}')
            await sink.wait_count(1)  # made again, and what was missed meanwhile filled in
            assert failed
            assert sink.seqs == [1]


async def test_sharded_channels_live_on_the_master_of_their_shard(redis_cluster: SharedCluster) -> None:
    with redis_backends("channels", url=redis_cluster.url) as make:
        async with make() as backend:
            sink = RecordingSink()
            await backend.registry.attach("alice", sink)
            shard = backend._shards.of_owner("alice")
            channel = backend._shards.keys[shard].channel("alice")
            assert channel.startswith(f"{{{make.prefix}:{shard}}}:")
            ports = [int(node.rpartition(":")[2]) for node in redis_cluster.url.split("//")[1].split(",")]
            with redis.RedisCluster(host="127.0.0.1", port=ports[0]) as admin:
                owner = admin.get_node_from_key(channel)
                with redis.Redis(host=owner.host, port=owner.port) as node:
                    assert channel.encode() in node.execute_command("PUBSUB SHARDCHANNELS")
                    # a classic PUBLISH to the name reaches nobody: it is a sharded channel
                    assert node.execute_command("PUBLISH", channel, b"x") == 0
            await backend.registry.publish("alice", "taskProgress", "t", 1, b'{"n":1}')
            await sink.wait_count(1)
            assert sink.seqs == [1]


async def test_another_number_of_shards_is_refused(redis_cluster: SharedCluster) -> None:
    with redis_backends("shards", url=redis_cluster.url) as make:
        async with make(shards=4):
            pass
        for other in (8, 1):
            with pytest.raises(ConfigurationError, match="4 shards"):
                async with make(shards=other):
                    pass


def test_cluster_urls_list_their_nodes_and_hide_the_password() -> None:
    backend = RedisBackend.from_url("redis+cluster://:s3cret@127.0.0.1:7100,127.0.0.1:7101", prefix="app")
    assert backend.url == "redis+cluster://:***@127.0.0.1:7100,127.0.0.1:7101"
    assert backend.cluster
    assert backend._shards.count == 8
    startup = sorted(node.port for node in backend.client.nodes_manager.startup_nodes.values())
    assert startup == [7100, 7101]
    assert "shards=8" in repr(backend)
    for bad in ("redis+cluster://127.0.0.1", "redis+cluster://127.0.0.1:7100/2", "redis+cluster://:7100"):
        with pytest.raises(ConfigurationError):
            RedisBackend.from_url(bad)
    with pytest.raises(ConfigurationError, match="hash tags"):
        RedisBackend.from_url("redis+cluster://127.0.0.1:7100", prefix="app{1}")
