"""Per-process limits of live connections: connections per identity, client messages per second;
and how a message over a length bound is told apart."""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, ClassVar

import anyio
import msgspec

from progressq._logonce import LogOnce, fingerprint

if TYPE_CHECKING:
    from progressq.hub import Hub

__all__ = ("ConnectionCounts", "TokenBucket", "oversized_resume_id")

logger = logging.getLogger("progressq.transport")


class ConnectionCounts:
    """Open connections per identity in this process, shared by a hub's WebSockets and
    event streams (see :meth:`of`)."""

    _of_hub: ClassVar[weakref.WeakKeyDictionary[Hub, ConnectionCounts]] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._refusals = LogOnce()

    @classmethod
    def of(cls, hub: Hub) -> ConnectionCounts:
        """The counts of ``hub``'s connections (one per hub, whichever transport asks)."""
        counts = cls._of_hub.get(hub)
        if counts is None:
            counts = cls._of_hub[hub] = ConnectionCounts()
        return counts

    def full(self, identity: str, limit: int) -> bool:
        """True (and logged, once a minute per identity) when ``identity`` is at ``limit``."""
        if self._counts.get(identity, 0) < limit:
            return False
        if self._refusals.first(identity):
            logger.warning(
                "refused a connection: identity %s already has %d connections (max_connections_per_identity); "
                "further refusals for this identity are not logged for a minute",
                fingerprint(identity),
                limit,
            )
        return True

    def add(self, identity: str, limit: int) -> bool:
        if self.full(identity, limit):
            return False
        self._counts[identity] = self._counts.get(identity, 0) + 1
        return True

    def remove(self, identity: str) -> None:
        left = self._counts.get(identity, 0) - 1
        if left > 0:
            self._counts[identity] = left
        else:
            self._counts.pop(identity, None)


class TokenBucket:
    """At most ``rate`` tokens a second, ``burst`` at once: a client's message rate."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = anyio.current_time()

    def take(self) -> bool:
        now = anyio.current_time()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def oversized_resume_id(error: Exception) -> bool:
    """True when ``error`` refused a ``resume`` for a ``clientId`` over its length bound.

    Such an id was never issued (ids are far shorter), so the resume is answered like any
    forged id (close 1008), not with ``invalid_message``.
    """
    text = str(error)
    return isinstance(error, msgspec.ValidationError) and text.endswith("at `$.clientId`") and "length" in text
