"""Per-connection delivery: a bounded outbox and the sink a registry feeds it through."""

from __future__ import annotations

from collections import deque

import anyio

from progressq.contracts import Event
from progressq.messages import frame_event

__all__ = ("IdentitySink", "Outbox", "SlowConsumer")


class SlowConsumer(Exception):
    """The client reads slower than its events arrive and its outbox is full."""


class Outbox:
    """What waits to be sent on one connection, at most ``limit`` messages.

    ``put`` never blocks the publisher: past the limit the outbox is marked overflowed and
    the writer closes the connection (the client then resumes from history), so a slow
    client costs bounded memory and never slows anyone else.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[str] = deque()
        self._wakeup = anyio.Event()
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, text: str) -> None:
        if len(self._items) >= self.limit:
            self.overflow()
        else:
            self._items.append(text)
            self._wakeup.set()

    def overflow(self) -> None:
        self.overflowed = True
        self._wakeup.set()

    def clear(self) -> None:
        self._items.clear()

    async def next_batch(self) -> list[str]:
        """Everything queued, waiting until something is. Raises ``SlowConsumer``."""
        while not self._items and not self.overflowed:
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        if self.overflowed:
            raise SlowConsumer
        batch = list(self._items)
        self._items.clear()
        return batch


class IdentitySink:
    """Feeds one identity's events into a connection's outbox, in ``seq`` order, once each.

    Until :meth:`go_live` it holds what arrives (the connection is still sending its
    snapshot or replay); afterwards it drops what the snapshot or replay already covered.
    ``fresher`` maps task ids to (revision, view bytes) of a snapshot that may be newer than
    the next live events of those tasks; such events are sent with the snapshot's view, so
    a client's view never goes back in time.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._held: list[Event] | None = []
        self._watermark = 0
        self._fresher: dict[str, tuple[int, bytes]] = {}
        self.active = True

    def deliver(self, event: Event) -> None:
        if not self.active:
            return
        if self._held is not None:
            self._held.append(event)
            if len(self._held) > self._outbox.limit:
                self._outbox.overflow()
            return
        self._forward(event)

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
        frame = event.frame
        if self._fresher:
            newer = self._fresher.get(event.task_id)
            if newer is not None:
                if event.revision < newer[0]:
                    frame = frame_event(event.kind, event.seq, newer[1]).decode()
                else:
                    del self._fresher[event.task_id]
        self._outbox.put(frame)
