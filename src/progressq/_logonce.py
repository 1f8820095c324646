"""Logging a repeated breach once per window, and naming an identity in a log safely."""

from __future__ import annotations

import hashlib
import time

__all__ = ("LogOnce", "fingerprint")


def fingerprint(identity: str) -> str:
    """A short, stable name for ``identity`` in logs.

    Identity ids are capabilities: whoever reads one can act as its owner. Logs carry this
    digest instead, which names the identity without granting anything.
    """
    return hashlib.sha256(identity.encode("utf-8", "replace")).hexdigest()[:12]


class LogOnce:
    """Says whether a breach is the first of its key in the last ``window`` seconds.

    Bounded: beyond ``max_keys`` remembered keys, the oldest are forgotten (and may be
    logged again).
    """

    def __init__(self, window: float = 60.0, max_keys: int = 10_000) -> None:
        self._window = window
        self._max_keys = max_keys
        self._until: dict[str, float] = {}

    def first(self, key: str) -> bool:
        now = time.monotonic()
        until = self._until.get(key)
        if until is not None and until > now:
            return False
        self._until.pop(key, None)
        if len(self._until) >= self._max_keys:
            for stale in [k for k, t in self._until.items() if t <= now] or list(self._until)[: self._max_keys // 2]:
                del self._until[stale]
        self._until[key] = now + self._window
        return True
