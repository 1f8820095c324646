"""Per-connection delivery: a bounded outbox and the sink a registry feeds it through."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import anyio
import msgspec

from progressq._counters import delivery
from progressq.contracts import Event
from progressq.messages import frame_event_text

__all__ = ("IdentitySink", "Outbox", "SlowConsumer")


class SlowConsumer(Exception):
    """The client reads slower than its events arrive and its outbox is full."""


class _Entry(NamedTuple):
    text: str
    task_id: str | None = None  # set on events, which may be merged
    task_json: bytes | None = None


class _StatusOf(msgspec.Struct):
    status: str
    attempt: int


_status_decoder = msgspec.json.Decoder(_StatusOf)


class Outbox:
    """What waits to be sent on one connection, at most ``limit`` messages.

    ``put`` never blocks the publisher. When the client reads slower than its events
    arrive and the outbox fills, queued progress of the same task is merged: of each run
    of events of one task with one status (and attempt), only the latest is kept, so every
    status change, and every terminal event, still reaches the client, with the latest
    progress. If merging frees nothing, the outbox overflows and the writer closes the
    connection (the client resumes from history). A slow client costs bounded memory and
    never slows anyone else.
    """

    __slots__ = ("_batch", "_items", "_wakeup", "limit", "merged", "on_idle_put", "overflowed", "send_now")

    def __init__(self, limit: int, *, batch: int = 64) -> None:
        self.limit = limit
        self._batch = batch
        # A list, not a deque: an idle connection's empty list costs a few bytes, a deque
        # a whole block. Batches are taken from the front, at most ``batch`` at a time.
        self._items: list[_Entry] = []
        self._wakeup: anyio.Event | None = None  # only while the writer waits
        # Called when a message (or the overflow) arrives and no writer waits for it: the
        # connection starts one then, so an idle connection needs no writer task.
        self.on_idle_put: Callable[[], None] | None = None
        # Offered a message put into an empty outbox that no writer waits on: True when it
        # took the message (sent it, or handed it to a writer it started), so that the
        # message is never queued. The common case of a client that keeps up: no entry, no
        # batch, no wake-up per message.
        self.send_now: Callable[[str], bool] | None = None
        self.overflowed = False
        self.merged = 0  # events merged away, for statistics and tests

    def __len__(self) -> int:
        return len(self._items)

    def put(self, text: str, task_id: str | None = None, task_json: bytes | None = None) -> None:
        """Queue a message; an event names its task (``task_id``, ``task_json``) so it can be merged."""
        if not self._items:
            send_now = self.send_now
            if send_now is not None and self._wakeup is None and not self.overflowed and send_now(text):
                delivery.messages_sent += 1
                if self._items:  # the send queued more meanwhile: whoever sends them goes on
                    self._wake()
                return
        if len(self._items) >= self.limit:
            self._merge()
            if len(self._items) >= self.limit:
                self.overflow()
                return
        self._items.append(_Entry(text, task_id, task_json))
        self._wake()

    def overflow(self) -> None:
        if not self.overflowed:
            delivery.slow_consumers += 1
        self.overflowed = True
        self._wake()

    def clear(self) -> None:
        self._items.clear()

    def take(self) -> list[str]:
        """The oldest queued messages, at most ``batch`` (so that what is not sent yet can
        still be merged); empty when none are queued. Raises ``SlowConsumer``."""
        if self.overflowed:
            raise SlowConsumer
        items = self._items
        if len(items) <= self._batch:
            self._items = []
            delivery.messages_sent += len(items)
            return [entry.text for entry in items]
        taken = items[: self._batch]
        del items[: self._batch]
        delivery.messages_sent += len(taken)
        return [entry.text for entry in taken]

    async def wait(self) -> None:
        """Until a message is queued or the outbox overflows."""
        while not self._items and not self.overflowed:
            self._wakeup = wakeup = anyio.Event()
            try:
                await wakeup.wait()
            finally:
                if self._wakeup is wakeup:  # cancelled: the next put must start a writer
                    self._wakeup = None

    async def next_batch(self) -> list[str]:
        """The oldest queued messages (see :meth:`take`), waiting until there are some."""
        await self.wait()
        return self.take()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
        elif self.on_idle_put is not None:
            self.on_idle_put()

    def _merge(self) -> None:
        # Walk from the newest: an event is superseded when a later kept event of the same
        # task has the same status and attempt.
        kept: list[_Entry] = []
        later: dict[str, _StatusOf] = {}
        for entry in reversed(self._items):
            if entry.task_id is not None and entry.task_json is not None:
                state = _status_decoder.decode(entry.task_json)
                if later.get(entry.task_id) == state:
                    self.merged += 1
                    delivery.events_merged += 1
                    continue
                later[entry.task_id] = state
            kept.append(entry)
        kept.reverse()
        self._items = kept


class IdentitySink:
    """Feeds one identity's events into a connection's outbox, in ``seq`` order, once each.

    Until :meth:`go_live` it holds what arrives (the connection is still sending its
    snapshot or replay); afterwards it drops what the snapshot or replay already covered.
    ``fresher`` maps task ids to (revision, view bytes) of a snapshot that may be newer than
    the next live events of those tasks; such events are sent with the snapshot's view, so
    a client's view never goes back in time.
    """

    __slots__ = ("_fresher", "_held", "_outbox", "_watermark", "active", "on_resync")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._held: list[Event] | None = []
        self._watermark = 0
        self._fresher: dict[str, tuple[int, bytes]] = {}
        self.active = True
        # Called when the registry lost the history this sink's events are numbered in
        # (Redis restarted without its data): the connection sends a fresh snapshot.
        self.on_resync: Callable[[], None] | None = None

    def deliver(self, event: Event) -> None:
        if not self.active:
            return
        if self._held is not None:
            self._held.append(event)
            if len(self._held) > self._outbox.limit:
                self._outbox.overflow()
            return
        if self._fresher:
            self._forward(event)
        elif event.seq > self._watermark:  # ``_forward`` without a snapshot to repair from
            self._watermark = event.seq
            frame = event.frame_text
            if frame is None:  # ``event.frame`` spelled out: a property is called from C, a frame of its own
                frame = event.frame_text = frame_event_text(event.kind, event.seq, event.task_json)
            self._outbox.put(frame, event.task_id, event.task_json)

    def resync(self) -> None:
        """The identity's history was lost: hold what arrives until a new snapshot is sent
        (:meth:`go_live` again), and ask the connection for one."""
        if not self.active:
            return
        if self._held is None:
            self._held = []
        if self.on_resync is not None:
            self.on_resync()

    def go_live(self, after_seq: int, replay: list[Event], fresher: dict[str, tuple[int, bytes]]) -> None:
        self._watermark = after_seq
        self._fresher = fresher
        held, self._held = self._held or [], None
        for event in replay:
            self._forward(event)
        for event in held:
            self._forward(event)

    def _forward(self, event: Event) -> None:
        if event.seq <= self._watermark:
            return
        self._watermark = event.seq
        frame, task_json = event.frame, event.task_json
        if self._fresher:
            newer = self._fresher.get(event.task_id)
            if newer is not None:
                if event.revision < newer[0]:
                    task_json = newer[1]
                    frame = frame_event_text(event.kind, event.seq, task_json)
                else:
                    del self._fresher[event.task_id]
        self._outbox.put(frame, task_id=event.task_id, task_json=task_json)
