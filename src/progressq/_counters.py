"""What this process delivered, merged and dropped: monotonic counts for metrics.

Counted where it happens (a connection's outbox, the backend outage tracker) and read by
exporters such as :mod:`progressq.prometheus`. One set per process, like the process's own
CPU and memory counters: adding to an int is all a hot path pays.
"""

from __future__ import annotations

__all__ = ("DeliveryCounters", "delivery")


class DeliveryCounters:
    """Monotonic counts since the process started.

    Attributes:
        messages_sent: messages handed to clients' connections (events, snapshots, replies).
        events_merged: queued progress events replaced by a newer one of the same task
            before a slow client read them.
        slow_consumers: connections closed because their send buffer stayed full.
        backend_errors: operations that failed because the backend did not answer.
    """

    __slots__ = ("backend_errors", "events_merged", "messages_sent", "slow_consumers")

    def __init__(self) -> None:
        self.messages_sent = 0
        self.events_merged = 0
        self.slow_consumers = 0
        self.backend_errors = 0


delivery = DeliveryCounters()
"""This process's counts."""
