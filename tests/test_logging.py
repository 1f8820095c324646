"""What progressq writes to its logs: silent by default, one line per attempt's start and
end, a backend outage as two lines, and never an identity id."""

from __future__ import annotations

import logging

import anyio
import pytest

import progressq
import progressq._outage
from progressq import Hub, MemoryBackend, TaskContext
from progressq._outage import Outage

pytestmark = pytest.mark.anyio

SECRET = "logging-test-secret-0123456789"


def test_the_library_logger_has_a_null_handler() -> None:
    assert progressq.__name__ == "progressq"
    handlers = logging.getLogger("progressq").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


async def test_each_attempt_logs_one_line_at_its_start_and_one_at_its_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="progressq")
    hub = Hub(MemoryBackend(), secret=SECRET, progress_interval=0.0, shutdown_grace=1.0)

    @hub.task("flaky", max_attempts=2)
    async def flaky(ctx: TaskContext) -> None:
        await ctx.report(50, "half")
        if ctx.name == "fails":
            raise RuntimeError("on purpose")

    owner = hub.identities.mint()
    async with hub:
        done = await hub.submit("flaky", owner=owner, name="works")
        failing = await hub.submit("flaky", owner=owner, name="fails")
        with anyio.fail_after(30):
            while (await hub.get(failing.id, owner=owner)).status != "failed" or (
                await hub.get(done.id, owner=owner)
            ).status != "completed":
                await anyio.sleep(0.01)

    lines = [r for r in caplog.records if r.name == "progressq.tasks"]
    ends = {(r.task_id, r.attempt): r for r in lines if r.getMessage().startswith("task ended")}  # type: ignore[attr-defined]
    starts = {(r.task_id, r.attempt): r for r in lines if r.getMessage().startswith("task started")}  # type: ignore[attr-defined]
    assert set(starts) == set(ends) == {(done.id, 1), (failing.id, 1), (failing.id, 2)}
    assert len(lines) == 6
    assert [ends[k].outcome for k in [(done.id, 1), (failing.id, 1), (failing.id, 2)]] == [  # type: ignore[attr-defined]
        "completed",
        "retrying",
        "failed",
    ]
    for record in lines:
        assert record.kind == "flaky"  # type: ignore[attr-defined]
        assert f"task_id={record.task_id}" in record.getMessage()  # type: ignore[attr-defined]
    assert all(ends[k].elapsed >= 0 for k in ends)  # type: ignore[attr-defined]
    # An identity id is a capability: it is in no line and no attribute of any record.
    for record in caplog.records:
        assert owner not in record.getMessage()
        assert owner not in repr(vars(record))


def test_an_outage_is_two_lines_whatever_fails_in_between(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="progressq.outage")
    outage = Outage()
    outage.answered()  # no outage: nothing to say
    for n in range(50):
        outage.failed(f"operation {n}", ConnectionError("refused"))
    outage.answered()
    outage.answered()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("backend unavailable: operation 0 failed")
    assert messages[1].startswith("backend available again")
    assert "50 operations failed" in messages[1]
    assert not [r for r in caplog.records if r.exc_info]


def test_failures_just_after_an_outage_ends_are_its_tail_and_later_ones_a_new_outage(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="progressq.outage")
    clock = [100.0]
    monkeypatch.setattr(progressq._outage.time, "monotonic", lambda: clock[0])
    outage = Outage(settle=5.0)
    outage.failed("a", ConnectionError("refused"))
    clock[0] += 8
    outage.answered()
    clock[0] += 1
    outage.failed("a stale pooled connection", ConnectionError("closed"))  # the tail: silent
    outage.answered()
    clock[0] += 10
    outage.failed("b", ConnectionError("refused"))  # a new outage
    outage.answered()
    messages = [r.getMessage().split(":")[0] for r in caplog.records]
    assert messages == ["backend unavailable", "backend available again"] * 2
