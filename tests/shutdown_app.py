"""An app for the shutdown test, run with ``uvicorn tests.shutdown_app:app`` in a process of
its own (uvicorn handles signals only in the main thread). When its hub has closed, it
writes ``closed`` to the file named by ``PQ_TEST_MARKER``."""

from __future__ import annotations

import os
from types import TracebackType

import anyio

from progressq import Hub, MemoryBackend, TaskContext
from progressq.starlette import create_app
from progressq.transport import TransportSettings
from tests.apps import SECRET


class MarkingHub(Hub):
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        await anyio.Path(os.environ["PQ_TEST_MARKER"]).write_text("closed")


hub = MarkingHub(MemoryBackend(), secret=SECRET, shutdown_grace=1.0)


@hub.task("noop")
async def noop(ctx: TaskContext) -> None:
    """Nothing: the test only holds connections open."""


app = create_app(hub, TransportSettings(max_connections_per_identity=100))
