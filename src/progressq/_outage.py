"""A backend outage in the log: one line when it starts, one when it ends.

During an outage every report, heartbeat and request fails; a traceback for each buries the
one fact an operator needs (the backend is gone, since when, and when it came back). Every
part of progressq that meets ``BackendUnavailable`` tells :data:`backend_outage` instead of
logging, and every part that reaches the backend again says so.
"""

from __future__ import annotations

import logging
import time

from progressq._counters import delivery

__all__ = ("Outage", "backend_outage")

logger = logging.getLogger("progressq.outage")


class Outage:
    """Logs the first failure of an outage and its end, and counts what failed between.

    Args:
        settle: seconds after an outage ends during which a failure is not a new outage.
            When Redis comes back, each pooled connection opened before it went away fails
            once more; those last failures are not worth a pair of lines each.
    """

    __slots__ = ("_ended", "_failures", "_settle", "_since", "ongoing")

    def __init__(self, settle: float = 5.0) -> None:
        self._settle = settle
        self._since: float | None = None
        self._ended: float | None = None
        self._failures = 0
        # Whether an outage is on (``_since`` is set), as a plain attribute: a progress
        # report reads it after every write instead of calling ``answered``.
        self.ongoing = False

    def failed(self, what: str, error: BaseException) -> None:
        """``what`` failed because the backend did not answer (logged if it is the first)."""
        delivery.backend_errors += 1
        now = time.monotonic()
        if self._since is None and self._ended is not None and now - self._ended < self._settle:
            return  # the tail of the outage that just ended
        self._failures += 1
        if self._since is None:
            self._since, self.ongoing = now, True
            logger.warning(
                "backend unavailable: %s failed (%s); further failures are not logged until it answers again",
                what,
                error,
                extra={"outage": "start", "operation": what},
            )

    def reset(self) -> None:
        """Forget an outage without logging its end (its backend was replaced or closed)."""
        self._since, self._ended, self._failures, self.ongoing = None, None, 0, False

    def answered(self) -> None:
        """The backend answered (cheap when there is no outage: call it on every success)."""
        if self._since is not None:
            self._ended = time.monotonic()
            elapsed = self._ended - self._since
            failures, self._since, self._failures, self.ongoing = self._failures, None, 0, False
            logger.warning(
                "backend available again: after %.1f s, %d operations failed meanwhile",
                elapsed,
                failures,
                extra={"outage": "end", "elapsed": round(elapsed, 3), "failures": failures},
            )


backend_outage = Outage()
"""This process's view of its backend (one backend per process is the norm)."""
