"""The backend conformance suite: the contract tests every backend must pass.

Run it on your own backend by subclassing :class:`BackendConformance` in a test module and
providing a ``make_backend`` fixture that returns a factory of *unopened* backends (the
tests open and close them)::

    import pytest
    from progressq.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        shared_state = True  # two backends from one factory see the same tasks and events

        @pytest.fixture
        def make_backend(self):
            def make(*, capacity=None, history_size=None):
                return MyBackend(capacity=capacity or 10_000, history_size=history_size or 1000)
            yield make
            ...  # delete what the test stored

The tests are async and use the anyio pytest plugin (installed with anyio); they run on
asyncio unless the subclass overrides the ``anyio_backend`` fixture. pytest is needed to
import this module; progressq itself never imports it.

The suite covers every operation of the contract (``progressq.contracts``), the capabilities
included: on a backend that implements one itself, its own; on a backend that takes the
default from ``QueueDefaults`` / ``BackendDefaults``, the default's promise (for example,
without its own ``limit_running_per_owner`` a queue is checked to ignore the cap).

``make_backend(capacity=n)`` must give a queue that holds at most ``n`` waiting tasks;
``make_backend(history_size=n)`` a registry that keeps at least the last ``n`` events of
an identity (and far fewer than ``n + 200``). With ``shared_state = True`` the suite also
checks that two backends from one factory behave as two processes on one store.
"""

from __future__ import annotations

from typing import ClassVar

import anyio
import pytest

from progressq._conformance_capabilities import CapabilityConformance
from progressq._conformance_queue import QueueConformance
from progressq._conformance_registry import RegistryConformance
from progressq._conformance_scheduling import SchedulingConformance
from progressq._conformance_support import (
    BackendFactory,
    RecordingSink,
    check_task_events,
    counts,
    gapless_from_one,
    terminal_ids,
)
from progressq._context import TaskContext
from progressq.hub import Hub

__all__ = ("BackendConformance", "BackendFactory", "RecordingSink", "check_task_events")


class BackendConformance(QueueConformance, RegistryConformance, CapabilityConformance, SchedulingConformance):
    """Contract tests for a backend's ``TaskQueue`` and ``ClientRegistry``, their
    capabilities (fair dispatch, delayed tasks, batch leasing, ...), and the Hub on it.

    Subclass it as ``Test...`` and provide the ``make_backend`` fixture (see the module doc).
    """

    shared_state: ClassVar[bool] = False
    """Two backends made by one factory share tasks and events (as processes on one Redis)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    # --- the engine on this backend ------------------------------------------------------

    @pytest.mark.anyio
    async def test_hub_delivers_each_owner_its_task_events(self, make_backend: BackendFactory) -> None:
        hub = Hub(
            make_backend(), secret="conformance-suite-secret", concurrency=4, progress_interval=0.0, shutdown_grace=1.0
        )

        @hub.task("steps")
        async def steps(ctx: TaskContext) -> dict[str, int]:
            for step in range(1, 11):
                await ctx.report(step * 10, f"step {step}")
                await anyio.sleep(0.01)
            if "fail" in ctx.name:
                raise RuntimeError("asked to fail")
            return {"steps": 10}

        async with hub:
            sinks = {owner: RecordingSink() for owner in ("alice", "bob")}
            for owner, sink in sinks.items():
                await hub.registry.attach(owner, sink)
            tasks = {
                owner: [(await hub.submit("steps", owner=owner, name=f"{owner} {n}")).id for n in range(3)]
                for owner in sinks
            }
            failing = await hub.submit("steps", owner="bob", name="please fail")
            tasks["bob"].append(failing.id)
            for owner, sink in sinks.items():
                expected = set(tasks[owner])
                await sink.wait_for(lambda events: terminal_ids(events) >= expected)  # noqa: B023
            await anyio.sleep(0.2)
            for owner, sink in sinks.items():
                assert gapless_from_one(sink.seqs)
                assert {e.task_id for e in sink.events} == set(tasks[owner])
                check_task_events(sink.events)
            final = await hub.get(failing.id, owner="bob")
            assert final.status == "failed"
            assert final.error == "RuntimeError: asked to fail"
            assert [r.status for r in await hub.list(owner="alice")] == ["completed"] * 3
            assert counts(await hub.queue.statistics()) == (0, 0)
