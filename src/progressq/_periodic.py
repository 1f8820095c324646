"""Periodic tasks: a schedule (every N seconds, or a cron expression) fires once per slot.

Every open hub runs the schedules registered on it; the hubs of all processes sharing a
backend agree on the slots (times on the wall clock), and the first one to claim a slot on
the backend submits that slot's task, so each slot fires once however many processes run.
A slot passed while no process ran is not fired afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from progressq.contracts import SlotClaims
from progressq.errors import ConfigurationError

__all__ = ("Cron", "Periodic", "run_schedules")

logger = logging.getLogger("progressq.periodic")

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))
_SEARCH = timedelta(days=366 * 4)  # the furthest a cron expression's next time is looked for


class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week, UTC): each
    field ``*``, a number, a range ``a-b``, a list ``a,b`` or a step ``*/n`` / ``a-b/n``;
    Sunday is 0. As in cron, when both day fields are restricted, either one matching will do.
    """

    def __init__(self, expression: str) -> None:
        parts = expression.split()
        if len(parts) != 5:
            raise ConfigurationError(f"a cron expression has 5 fields, not {len(parts)}: {expression!r}")
        self.expression = expression
        fields = [_cron_field(part, name, low, high) for part, (name, low, high) in zip(parts, _FIELDS, strict=True)]
        self.minutes, self.hours, self.days, self.months, self.weekdays = fields
        self._any_day, self._any_weekday = parts[2] == "*", parts[4] == "*"

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        day, weekday = when.day in self.days, (when.isoweekday() % 7) in self.weekdays
        if self._any_day or self._any_weekday:
            return day and weekday
        return day or weekday

    def next_after(self, when: datetime) -> datetime:
        """The first matching minute strictly after ``when``."""
        candidate = when.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        end = candidate + _SEARCH
        while candidate < end:
            if candidate.month not in self.months:  # skip to the next month at once
                candidate = (candidate.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if self.matches(candidate):
                return candidate
            if candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
            else:
                candidate += timedelta(minutes=1)
        raise ConfigurationError(f"the cron expression {self.expression!r} never matches")


def _cron_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    try:
        for part in text.split(","):
            span, _, step_text = part.partition("/")
            step = int(step_text) if step_text else 1
            if span == "*":
                start, stop = low, high
            elif "-" in span:
                start, stop = (int(n) for n in span.split("-", 1))
            else:
                start = stop = int(span)
            if step < 1 or not low <= start <= stop <= high:
                raise ValueError
            values.update(range(start, stop + 1, step))
    except ValueError:
        raise ConfigurationError(f"cron {name} field must be within {low}-{high}: {text!r}") from None
    return frozenset(values)


@dataclass(frozen=True)
class Periodic:
    """One schedule: submit ``kind`` for ``owner`` every ``interval`` seconds, or at each
    time ``cron`` matches."""

    name: str
    kind: str
    owner: str
    params: Any = None
    interval: float | None = None
    cron: Cron | None = None
    task_name: str | None = field(default=None)

    def next_slot(self, now: datetime) -> datetime:
        """The first slot strictly after ``now``."""
        if self.cron is not None:
            return self.cron.next_after(now)
        assert self.interval is not None  # one of the two, checked when registered
        epoch = now.timestamp()
        return datetime.fromtimestamp((math.floor(epoch / self.interval) + 1) * self.interval, UTC)

    def claim_ttl(self) -> float:
        """How long a slot's claim is kept: past any clock skew between processes."""
        return max(60.0, 2 * (self.interval or 60.0))


async def run_schedules(
    schedules: list[Periodic], claims: SlotClaims, submit: Callable[[Periodic, datetime], Awaitable[object]]
) -> None:
    """Fire each schedule's slots, each once across processes, until cancelled."""
    async with anyio.create_task_group() as group:
        for schedule in schedules:
            group.start_soon(_run_one, schedule, claims, submit)


async def _run_one(
    schedule: Periodic, claims: SlotClaims, submit: Callable[[Periodic, datetime], Awaitable[object]]
) -> None:
    slot = schedule.next_slot(datetime.now(UTC))
    while True:
        await anyio.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
        key = f"{schedule.name}:{int(slot.timestamp() * 1000)}"
        try:
            if await claims.claim_slot(key, schedule.claim_ttl()):
                await submit(schedule, slot)
        except Exception:
            logger.exception("periodic task %r: slot %s not fired", schedule.name, slot.isoformat())
        slot = schedule.next_slot(max(slot, datetime.now(UTC)))
