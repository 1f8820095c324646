"""Send on the publisher's stack when the send does not have to wait.

An ASGI server's ``send`` of one WebSocket message normally finishes without suspending
(uvicorn writes to the transport and waits only while the transport is paused). Handing
every message to a writer task costs a wake-up and a task switch per message, most of the
CPU a delivery takes. :func:`start` runs a send coroutine up to its first suspension on the
caller's stack; when it did not finish, the rest (:class:`Unfinished`) is awaited by the
connection's writer task, so a slow client never holds up whoever published.

Only for asyncio: there, what a coroutine yields (a future, or ``None``) can be passed on by
whichever task awaits the rest. Trio's traps belong to the task that yields them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ("Unfinished", "available", "start")


def available() -> bool:
    """True where :func:`start` may be used: in an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio, or no event loop at all
        return False
    return True


class Unfinished:
    """The rest of a send coroutine that suspended; await it (once) in another task."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # cancellation or a timeout: into the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration:
                    return

    def close(self) -> None:
        """Abandon the rest (the connection is going away without sending it)."""
        self._coro.close()


def start(coro: Coroutine[Any, Any, None]) -> Unfinished | None:
    """Run ``coro`` until it finishes (None) or first suspends (the rest to await).

    Raises what the coroutine raises before it first suspends.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return Unfinished(coro, yielded)
