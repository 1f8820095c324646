from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from progressq.transport import TransportSettings
from tests.apps import FRAMEWORKS, RunningServer, build_app, make_hub, serve


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Core tests run on both event loops (override to asyncio where a client needs it)."""
    return str(request.param)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_server(framework: str) -> Any:
    """Start a real server with the given transport settings / hub options."""

    @contextlib.contextmanager
    def factory(
        settings: TransportSettings | None = None, *, uvicorn: dict[str, Any] | None = None, **hub_options: Any
    ) -> Iterator[RunningServer]:
        hub = make_hub(**hub_options)
        app = build_app(framework, hub, settings or TransportSettings())
        with serve(app, hub, **(uvicorn or {})) as running:
            yield running

    return factory


@pytest.fixture
def server(make_server: Any) -> Iterator[RunningServer]:
    with make_server() as running:
        yield running
