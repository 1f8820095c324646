"""The in-memory client registry: per-identity sequences, ring buffers and delivery."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

from progressq.contracts import Event, EventSink, RegistryStatistics
from progressq.errors import ConfigurationError
from progressq.messages import EventType

__all__ = ("MemoryClientRegistry",)


class _IdentityState:
    # History is made on the first event: an identity that is only connected (an idle
    # page) costs no ring buffer.
    __slots__ = ("history", "seq", "sinks")

    def __init__(self) -> None:
        self.seq = 0
        self.history: deque[Event] | None = None
        # A tuple, replaced on attach and detach (rare): an event reads its one sink without
        # iterating a set, and a delivery that attaches or detaches changes no tuple in use.
        self.sinks: tuple[EventSink, ...] = ()


class MemoryClientRegistry:
    """Per-identity sequence, bounded history and live delivery inside one process.

    Args:
        history_size: events kept per identity for resuming.
        max_identities: identities remembered; the least recently active ones without a
            connection (being connected is being active) are forgotten first (their ``seq``
            then starts again at 1, and a resume from before answers with a snapshot).
    """

    def __init__(self, *, history_size: int = 1000, max_identities: int = 100_000) -> None:
        if history_size < 1 or max_identities < 1:
            raise ConfigurationError("history_size and max_identities must be >= 1")
        self._history_size = history_size
        self._max_identities = max_identities
        self._states: OrderedDict[str, _IdentityState] = OrderedDict()
        self._connections = 0
        self._connected_identities = 0

    async def publish(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> Event:
        return self.publish_now(identity, kind, task_id, revision, task_json)

    def publish_now(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> Event:
        """:meth:`publish` without a coroutine: nothing in it waits. The memory backend's
        save-and-publish calls it, so that a progress report is one coroutine less deep."""
        state = self._states.get(identity)
        if state is None:
            state = self._states[identity] = _IdentityState()
            self._forget_idle(keep=identity)
        elif not state.sinks:  # a connected identity is never forgotten: ``detach`` marks it active
            self._states.move_to_end(identity)
        state.seq += 1
        event = Event(state.seq, kind, task_id, revision, task_json)
        history = state.history
        if history is None:
            history = state.history = deque(maxlen=self._history_size)
        history.append(event)
        sinks = state.sinks
        if len(sinks) == 1:  # the common case: one connection
            sinks[0].deliver(event)
        else:
            for sink in sinks:
                sink.deliver(event)
        # Every connection has sent or queued the frame by now: history keeps the view, not a
        # second copy of it as text (a replay frames it again), so that 1,000 events of
        # history per identity cost half the memory, and each event's frame is freed, for
        # the next one to reuse while it is still in the cache.
        event.frame_text = None
        return event

    async def attach(self, identity: str, sink: EventSink) -> None:
        state = self._states.get(identity)
        if state is None:
            state = self._states[identity] = _IdentityState()
            self._forget_idle(keep=identity)
        if not state.sinks:
            self._connected_identities += 1
        if sink not in state.sinks:
            state.sinks += (sink,)
            self._connections += 1

    async def detach(self, identity: str, sink: EventSink) -> None:
        state = self._states.get(identity)
        if state is None or sink not in state.sinks:
            return
        state.sinks = tuple(attached for attached in state.sinks if attached is not sink)
        self._connections -= 1
        if not state.sinks:
            self._connected_identities -= 1
            self._states.move_to_end(identity)  # active until now: idle from here on

    async def current_seq(self, identity: str) -> int:
        state = self._states.get(identity)
        return 0 if state is None else state.seq

    async def events_after(self, identity: str, seq: int) -> Sequence[Event] | None:
        state = self._states.get(identity)
        current = 0 if state is None else state.seq
        if seq > current:
            return None  # the client knows of events this registry does not
        if seq == current:
            return []
        assert state is not None  # current > 0
        assert state.history  # an event was kept
        first = state.history[0].seq
        if first > seq + 1:
            return None
        return list(state.history)[seq + 1 - first :]

    def statistics(self) -> RegistryStatistics:
        return RegistryStatistics(connections=self._connections, clients=self._connected_identities)

    def _forget_idle(self, keep: str) -> None:
        """Forget idle identities beyond the bound, never ``keep`` (the one being created)."""
        excess = len(self._states) - self._max_identities
        if excess <= 0:
            return
        idle: list[str] = []
        for identity, state in self._states.items():  # least recently active first
            if not state.sinks and identity != keep:
                idle.append(identity)
                if len(idle) == excess:
                    break
        for identity in idle:
            del self._states[identity]
