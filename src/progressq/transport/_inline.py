"""Send on the publisher's stack when the send does not have to wait.

An ASGI server's ``send`` of one WebSocket message normally finishes without suspending
(uvicorn writes to the transport and waits only while the transport is paused). Handing
every message to a writer task costs a wake-up and a task switch per message, most of the
CPU a delivery takes. :func:`start` runs a send coroutine up to its first suspension on the
caller's stack; when it did not finish, the rest (:class:`Unfinished`) is awaited by the
connection's writer task, so a slow client never holds up whoever published.

Only for asyncio: there, what a coroutine yields (a future, or ``None``) can be passed on by
whichever task awaits the rest. Trio's traps belong to the task that yields them.

Every step of the send runs in one context of its own (a copy of the publisher's): a send
that sets a context variable and resets it after a suspension (tracing middleware does)
finds its variable where it left it, and the publisher's context is never changed. What a
send must not do is capture the current task (``asyncio.timeout()``, anyio cancel scopes or
locks): its first step runs on the publisher's task.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any

__all__ = ("FINISHED", "Unfinished", "available", "first_step", "start")

FINISHED: Any = object()
"""What :func:`first_step` answers for a coroutine that finished without suspending."""


def available() -> bool:
    """True where :func:`start` may be used: in an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio, or no event loop at all
        return False
    return True


class Unfinished:
    """The rest of a send coroutine that suspended; await it (once) in another task."""

    __slots__ = ("_context", "_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any, context: contextvars.Context) -> None:
        self._coro = coro
        self._yielded = yielded
        self._context = context

    def __await__(self) -> Generator[Any, Any, None]:
        coro, yielded, run = self._coro, self._yielded, self._context.run
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # cancellation or a timeout: into the coroutine
                try:
                    yielded = run(coro.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = run(coro.send, sent)
                except StopIteration:
                    return

    def close(self) -> None:
        """Abandon the rest (the connection is going away without sending it)."""
        self._coro.close()


async def awaiting(awaitable: Awaitable[None]) -> None:
    await awaitable


def first_step(coro: Coroutine[Any, Any, None], context: contextvars.Context) -> Any:
    """Run ``coro`` in ``context`` up to its first suspension: what it yielded, or
    :data:`FINISHED` if it finished. Raises what the coroutine raises.

    Through the coroutine's iterator and ``next`` with a default rather than ``coro.send``: a
    coroutine that returns then raises no ``StopIteration`` (whose exception and traceback
    cost as much as the rest of a send that does nothing).
    """
    return context.run(next, coro.__await__(), FINISHED)


def start(send: Awaitable[None]) -> Unfinished | None:
    """Run ``send`` until it finishes (None) or first suspends (the rest to await).

    ``send`` is normally a coroutine (an ASGI send is a coroutine function); any other
    awaitable is awaited by one of our own.

    Raises what the send raises before it first suspends.
    """
    coro = send if type(send) is CoroutineType else awaiting(send)
    context = contextvars.copy_context()
    yielded = first_step(coro, context)
    return None if yielded is FINISHED else Unfinished(coro, yielded, context)
