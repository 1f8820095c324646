"""The conformance tests of a backend's ``ClientRegistry``, and of two backend instances on
one store (``shared_state``)."""

from __future__ import annotations

from typing import ClassVar

import anyio
import pytest

from progressq._conformance_support import (
    WAIT,
    BackendFactory,
    RecordingSink,
    gapless_from_one,
    new_record,
    no_lease,
    publish_n,
    reg_counts,
)
from progressq.contracts import Backend

__all__ = ("RegistryConformance",)


class RegistryConformance:
    """Sequencing, history and delivery; and two instances acting as two processes."""

    shared_state: ClassVar[bool] = False

    # --- registry ------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_seq_is_gapless_from_one_per_identity(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            registry = backend.registry
            assert await registry.current_seq("alice") == 0
            seqs: dict[str, list[int]] = {"alice": [], "bob": []}
            for n in range(1, 21):
                identity = "alice" if n % 3 else "bob"
                seqs[identity].append((await publish_n(backend, identity, n)).seq)
            assert gapless_from_one(seqs["alice"])
            assert gapless_from_one(seqs["bob"])
            assert await registry.current_seq("alice") == len(seqs["alice"])
            assert await registry.current_seq("bob") == len(seqs["bob"])

    @pytest.mark.anyio
    async def test_events_reach_only_their_identity(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            identities = [f"user-{i}" for i in range(6)]
            sinks = {identity: RecordingSink() for identity in identities}
            for identity, sink in sinks.items():
                await backend.registry.attach(identity, sink)
            published: dict[str, list[bytes]] = {identity: [] for identity in identities}
            for n in range(60):
                identity = identities[(n * 7) % len(identities)]
                event = await backend.registry.publish(
                    identity, "taskProgress", f"{identity}-task", n + 1, b'{"for":"%s"}' % identity.encode()
                )
                published[identity].append(event.task_json)
            for identity, sink in sinks.items():
                await sink.wait_count(len(published[identity]))
            await anyio.sleep(0.2)  # give a stray event time to arrive
            for identity, sink in sinks.items():
                assert [e.task_json for e in sink.events] == published[identity]
                assert {e.task_id for e in sink.events} == {f"{identity}-task"}
                assert gapless_from_one(sink.seqs)

    @pytest.mark.anyio
    async def test_event_carries_what_was_published(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            sink = RecordingSink()
            await backend.registry.attach("alice", sink)
            payload = '{"id":"t-ü","note":"a:b\\nc"}'.encode()
            returned = await backend.registry.publish("alice", "taskQueued", "t-ü:1", 7, payload)
            await sink.wait_count(1)
            (got,) = sink.events
            for event in (returned, got):
                assert (event.seq, event.kind, event.task_id, event.revision, event.task_json) == (
                    1,
                    "taskQueued",
                    "t-ü:1",
                    7,
                    payload,
                )
            assert got.frame.startswith('{"type":"taskQueued","seq":1,"task":')

    @pytest.mark.anyio
    async def test_every_sink_of_an_identity_gets_the_same_event(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            first, second = RecordingSink(), RecordingSink()
            await backend.registry.attach("alice", first)
            await backend.registry.attach("alice", second)
            assert reg_counts(backend) == (2, 1)
            await publish_n(backend, "alice", 1)
            await first.wait_count(1)
            await second.wait_count(1)
            assert first.events[0] is second.events[0]

    @pytest.mark.anyio
    async def test_detach_stops_delivery(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            registry = backend.registry
            kept, gone = RecordingSink(), RecordingSink()
            await registry.attach("alice", kept)
            await registry.attach("alice", gone)
            await registry.attach("bob", RecordingSink())
            assert reg_counts(backend) == (3, 2)
            await publish_n(backend, "alice", 1)
            await gone.wait_count(1)
            await registry.detach("alice", gone)
            await registry.detach("alice", gone)  # twice is harmless
            assert reg_counts(backend) == (2, 2)
            await publish_n(backend, "alice", 2)
            await kept.wait_count(2)
            await anyio.sleep(0.1)
            assert gone.seqs == [1]
            await registry.detach("alice", kept)
            assert reg_counts(backend) == (1, 1)
            # events go on being numbered and kept for a later resume
            await publish_n(backend, "alice", 3)
            assert await registry.current_seq("alice") == 3
            resumed = RecordingSink()
            await registry.attach("alice", resumed)
            await publish_n(backend, "alice", 4)
            await resumed.wait_count(1)
            assert resumed.seqs == [4]

    @pytest.mark.anyio
    async def test_events_after(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            registry = backend.registry
            assert await registry.events_after("alice", 0) == []
            assert await registry.events_after("alice", 3) is None
            for n in range(1, 6):
                await publish_n(backend, "alice", n)
            await publish_n(backend, "bob", 99)
            every = await registry.events_after("alice", 0)
            assert every is not None
            assert [e.seq for e in every] == [1, 2, 3, 4, 5]
            assert [e.task_json for e in every] == [b'{"n":%d}' % n for n in range(1, 6)]
            tail = await registry.events_after("alice", 3)
            assert tail is not None
            assert [(e.seq, e.revision) for e in tail] == [(4, 4), (5, 5)]
            assert await registry.events_after("alice", 5) == []
            assert await registry.events_after("alice", 6) is None  # a seq from the future

    @pytest.mark.anyio
    async def test_events_after_is_none_once_history_moved_on(self, make_backend: BackendFactory) -> None:
        async with make_backend(history_size=3) as backend:
            registry = backend.registry
            total = 260
            for n in range(1, total + 1):
                await publish_n(backend, "alice", n)
            assert await registry.events_after("alice", 0) is None
            assert await registry.events_after("alice", 10) is None
            for after in (total - 3, total - 1):
                events = await registry.events_after("alice", after)
                assert events is not None
                assert [e.seq for e in events] == list(range(after + 1, total + 1))
            for after in range(0, total + 1, 13):  # never a partial answer
                events = await registry.events_after("alice", after)
                assert events is None or [e.seq for e in events] == list(range(after + 1, total + 1))

    # --- two processes on one store (shared_state) ---------------------------------------

    @pytest.mark.anyio
    async def test_shared_delivery_and_isolation_across_instances(self, make_backend: BackendFactory) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as web, make_backend() as other_web, make_backend() as worker:
            alice, bob = RecordingSink(), RecordingSink()
            await web.registry.attach("alice", alice)
            await other_web.registry.attach("bob", bob)
            for n in range(1, 11):
                publisher = worker if n % 2 else web
                await publish_n(publisher, "alice" if n % 3 else "bob", n)
            await alice.wait_count(7)
            await bob.wait_count(3)
            await anyio.sleep(0.2)
            assert gapless_from_one(alice.seqs)
            assert len(alice.seqs) == 7
            assert gapless_from_one(bob.seqs)
            assert len(bob.seqs) == 3
            assert web.registry.statistics().clients == 1

    @pytest.mark.anyio
    async def test_shared_seq_gapless_under_concurrent_publishers(self, make_backend: BackendFactory) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as one, make_backend() as two:
            sink = RecordingSink()
            await one.registry.attach("alice", sink)
            returned: list[int] = []

            async def publish_many(backend: Backend, base: int) -> None:
                for n in range(40):
                    returned.append((await publish_n(backend, "alice", base + n)).seq)

            async with anyio.create_task_group() as group:
                for base, backend in enumerate((one, two, one, two)):
                    group.start_soon(publish_many, backend, base * 100)
            assert sorted(returned) == list(range(1, 161))
            await sink.wait_count(160)
            assert sink.seqs == list(range(1, 161))

    @pytest.mark.anyio
    async def test_shared_queue_hands_each_task_to_one_worker(self, make_backend: BackendFactory) -> None:
        if not self.shared_state:
            pytest.skip("this backend does not share state between instances")
        async with make_backend() as one, make_backend() as two:
            records = [new_record(n=n) for n in range(10)]
            for record in records:
                await one.queue.enqueue(record)
            leased: list[str] = []

            # Each takes until every task is out, then the other's wait is cancelled: a take
            # cancelled while nothing is left loses nothing, where a take cut off by a short
            # timeout on a busy machine could lose a lease it had just been given. A task handed
            # out twice shows up as a duplicate in ``leased``.
            async def take(backend: Backend, scope: anyio.CancelScope) -> None:
                while True:
                    leased.append((await backend.queue.lease()).record.id)
                    if len(leased) >= len(records):
                        scope.cancel()

            with anyio.move_on_after(WAIT):  # a hang guard
                async with anyio.create_task_group() as group:
                    group.start_soon(take, one, group.cancel_scope)
                    group.start_soon(take, two, group.cancel_scope)
            assert await no_lease(one) is None
            assert await no_lease(two) is None
            assert sorted(leased) == sorted(r.id for r in records), leased
