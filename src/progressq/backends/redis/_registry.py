"""The Redis client registry: per-identity seq, history stream and pub/sub delivery.

An identity's seq, history and channel live in its shard (see ``_shards``); a process listens
to each shard's channels on that shard's pub/sub connection (one for all on a single Redis).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Sequence

import anyio
import anyio.abc

from progressq._logonce import fingerprint
from progressq.backends.redis._calls import _Calls
from progressq.backends.redis._common import _EVENT_KINDS, _Client, _Keys, _text, _unavailable
from progressq.backends.redis._pubsub import _PubSub, _Subscription
from progressq.backends.redis._shards import _Shards
from progressq.contracts import (
    Event,
    EventSink,
    RegistryStatistics,
)
from progressq.errors import BackendUnavailable
from progressq.messages import EventType

logger = logging.getLogger("progressq.redis")


class _Identity(_Subscription):
    """The live state of one identity attached in this process."""

    def __init__(self, registry: RedisClientRegistry, identity: str, shard: int) -> None:
        self.registry = registry
        self.identity = identity
        self.shard = shard
        self.sinks: set[EventSink] = set()
        self.last: int | None = None  # last seq delivered to the sinks
        self.losses = 0  # the registry's count of data losses when ``last`` was read
        self.ready = anyio.Event()

    async def confirmed(self) -> None:
        losses = await self.registry.data_losses(self.shard)
        if self.last is None:
            self.losses = losses
            self.last = await self.registry.current_seq(self.identity)
            self.ready.set()
        elif losses != self.losses:
            # Redis came back without its data: the seq starts again at 1, below ``last``.
            self.losses = losses
            await self._resync()
        else:  # subscribed again after a lost connection: fetch what was missed
            await self._fill()

    def received(self, data: bytes) -> Awaitable[None] | None:
        # The next event in order is delivered here and now: no coroutine, no await.
        last = self.last
        if last is None:
            return None  # not confirmed yet: the seq read at confirmation covers this event
        seq_text, rev_text, kind_text, length_text, rest = data.split(b":", 4)
        seq = int(seq_text)
        if seq != last + 1:
            return None if seq <= last else self._after_gap(seq, rev_text, kind_text, length_text, rest)
        length = int(length_text)
        self._deliver(Event(seq, _EVENT_KINDS[kind_text], rest[:length].decode(), int(rev_text), rest[length:]))
        return None

    async def message(self, data: bytes) -> None:
        pending = self.received(data)
        if pending is not None:
            await pending

    async def _after_gap(self, seq: int, rev_text: bytes, kind_text: bytes, length_text: bytes, rest: bytes) -> None:
        """Events were missed before this one: fill them from the history first."""
        await self._fill()
        assert self.last is not None
        if seq != self.last + 1:
            return  # delivered by the fill, or history no longer holds the gap (the sinks resync)
        length = int(length_text)
        self._deliver(Event(seq, _EVENT_KINDS[kind_text], rest[:length].decode(), int(rev_text), rest[length:]))

    async def _fill(self) -> None:
        assert self.last is not None
        events = await self.registry.events_after(self.identity, self.last)
        if events is None:
            await self._resync()
            return
        for event in events:
            if event.seq > self.last:
                self._deliver(event)

    async def _resync(self) -> None:
        """History cannot say what was missed: every sink starts again from a snapshot."""
        self.last = await self.registry.current_seq(self.identity)
        logger.warning(
            "identity %s: the event history has a gap (Redis lost data?); its connections resync from a snapshot",
            fingerprint(self.identity),
        )
        for sink in tuple(self.sinks):
            try:
                sink.resync()
            except Exception:
                logger.exception("a sink of identity %s failed to resync", fingerprint(self.identity))

    def _deliver(self, event: Event) -> None:
        self.last = event.seq
        for sink in tuple(self.sinks):
            try:
                sink.deliver(event)
            except Exception:
                logger.exception("a sink of identity %s failed to take event %d", fingerprint(self.identity), event.seq)


class RedisClientRegistry:
    """Sequencing, history and live delivery on Redis. Made by :class:`RedisBackend`."""

    def __init__(
        self,
        client: _Client,
        calls: Sequence[_Calls],
        shards: _Shards,
        pubsubs: Sequence[_PubSub],
        *,
        attach_timeout: float,
    ) -> None:
        self._client = client
        self._calls = calls  # per shard
        self._shards = shards
        self._keys: Sequence[_Keys] = shards.keys
        self._pubsubs = pubsubs  # per shard
        self._attach_timeout = attach_timeout
        self._identities: dict[str, _Identity] = {}
        # Data loss (Redis restarted without persistence) is told by a marker key per shard:
        # each process remembers the marker it saw and checks it again after every reconnect.
        self._markers: dict[int, _Marker] = {}

    async def publish(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> Event:
        """Number, store and publish one event.

        Returns the event; its ``seq`` is 0 when it was dropped because its task has
        moved on (a newer revision is stored, or this one was already published).
        """
        call = self._calls[self._shards.of_owner(identity)].publish(identity, kind, task_id, revision, task_json)
        with _unavailable("publish"):
            seq = await call.run()
        return Event(int(seq), kind, task_id, revision, task_json)

    async def attach(self, identity: str, sink: EventSink) -> None:
        state = self._identities.get(identity)
        created = state is None
        if state is None:
            shard = self._shards.of_owner(identity)
            state = self._identities[identity] = _Identity(self, identity, shard)
        pubsub = self._pubsubs[state.shard]
        state.sinks.add(sink)
        try:
            if created:
                await pubsub.subscribe(self._keys[state.shard].channel(identity), state)
            with anyio.fail_after(self._attach_timeout):
                # While the pub/sub connection is down, say so at once rather than after
                # the whole timeout (a client of a server whose Redis is gone must hear it).
                while not state.ready.is_set():
                    if pubsub.broken:
                        raise BackendUnavailable("Redis is unavailable (pub/sub connection lost)")
                    with anyio.move_on_after(0.1):
                        await state.ready.wait()
        except TimeoutError as exc:
            await self.detach(identity, sink)
            raise BackendUnavailable("Redis did not confirm the subscription") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.detach(identity, sink)
            raise

    async def detach(self, identity: str, sink: EventSink) -> None:
        state = self._identities.get(identity)
        if state is None:
            return
        state.sinks.discard(sink)
        if not state.sinks:
            del self._identities[identity]
            await self._pubsubs[state.shard].unsubscribe(self._keys[state.shard].channel(identity))

    async def data_losses(self, shard: int) -> int:
        """How many times this process has seen the shard's Redis come back without its data."""
        pubsub = self._pubsubs[shard]
        state = self._markers.setdefault(shard, _Marker())
        if state.checked == pubsub.connections:
            return state.losses
        key = self._keys[shard].marker
        with _unavailable("data_losses"):
            marker = await self._client.get(key)
            if marker is None:
                await self._client.set(key, secrets.token_hex(8), nx=True)
                marker = await self._client.get(key)
        marker = None if marker is None else _text(marker)
        if state.marker is not None and marker != state.marker:
            state.losses += 1
            logger.warning("Redis lost its data (restarted without persistence?): connected clients resync")
        state.marker = marker
        state.checked = pubsub.connections
        return state.losses

    async def current_seq(self, identity: str) -> int:
        with _unavailable("current_seq"):
            value = await self._client.get(self._keys[self._shards.of_owner(identity)].seq(identity))
        return int(value or 0)

    async def events_after(self, identity: str, seq: int) -> Sequence[Event] | None:
        call = self._calls[self._shards.of_owner(identity)].events_after(identity, seq)
        with _unavailable("events_after"):
            current_raw, messages = await call.run()
        current = int(current_raw)
        if seq > current:
            return None  # the client knows of events this history does not
        if seq == current:
            return []
        events = [_event_from(message) for message in messages]
        if len(events) != current - seq or events[0].seq != seq + 1:
            return None
        return events

    def statistics(self) -> RegistryStatistics:
        connections = sum(len(state.sinks) for state in self._identities.values())
        return RegistryStatistics(connections=connections, clients=len(self._identities))


class _Marker:
    """What this process knows of one shard's data-loss marker."""

    __slots__ = ("checked", "losses", "marker")

    def __init__(self) -> None:
        self.marker: str | None = None
        self.checked = -1  # the pub/sub connection it was checked on
        self.losses = 0


def _event_from(message: bytes) -> Event:
    """An event of the history, kept as it was published: seq:revision:kind:length of the task
    id:task id, then the view."""
    seq_text, rev_text, kind_text, length_text, rest = message.split(b":", 4)
    length = int(length_text)
    return Event(int(seq_text), _EVENT_KINDS[kind_text], rest[:length].decode(), int(rev_text), rest[length:])
