"""Ending open event streams when the server is told to stop.

An ASGI server waits for open responses to finish before it runs the lifespan shutdown,
and an event stream never finishes by itself: without this, one open stream would keep the
server (and the hub's own shutdown) from ever ending. Servers tell the application nothing
(WebSockets they close themselves), so progressq listens where the server does: uvicorn's
signal handler (``Server.handle_exit``, installed in the main thread) is wrapped, and on
SIGINT or SIGTERM every open stream ends at once (its client reconnects with
``Last-Event-ID``, to another process behind the balancer or to this one when it is back).
Under another server, or one run outside the main thread, streams end when their clients
leave or when the server cancels them (uvicorn's ``--timeout-graceful-shutdown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import anyio

__all__ = ("end_on_server_stop",)

_open: set[anyio.CancelScope] = set()
_stopping = False
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def end_on_server_stop() -> Iterator[anyio.CancelScope]:
    """A cancel scope that is cancelled when the server is told to stop."""
    _watch_signals()
    scope = anyio.CancelScope()
    if _stopping:
        scope.cancel()
    _open.add(scope)
    try:
        with scope:
            yield scope
    finally:
        _open.discard(scope)


def _stop() -> None:
    global _stopping
    _stopping = True
    for scope in tuple(_open):
        scope.cancel()


def _watch_signals() -> None:
    global _stopping
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio: nothing to hook into
        return
    for sig in _SIGNALS:
        handler = signal.getsignal(sig)
        if getattr(handler, "__name__", None) != "handle_exit" or not hasattr(
            getattr(handler, "__self__", None), "should_exit"
        ):
            continue  # not uvicorn's handler (or ours already)
        signal.signal(sig, _wrapped(handler, loop))  # type: ignore[arg-type]
        _stopping = False  # a new server (this process may have run one before)


def _wrapped(handler: Callable[[int, FrameType | None], Any], loop: asyncio.AbstractEventLoop) -> Callable[..., None]:
    def handle_exit(sig: int, frame: FrameType | None) -> None:
        handler(sig, frame)
        loop.call_soon_threadsafe(_stop)

    handle_exit.__name__ = "progressq_handle_exit"
    return handle_exit
