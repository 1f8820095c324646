"""Shared by the security tests: example budgets, forged ids, the server's error log, backends."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from progressq.identity import IdentityAuthority, _b64, _base36
from tests.apps import SECRET
from tests.waiting import PATIENCE

LONG = os.environ.get("PROGRESSQ_LONG", "") not in ("", "0")
"""``PROGRESSQ_LONG=1``: the property tests run ten times as many examples (and longer
state-machine runs)."""


def budget(examples: int) -> int:
    """``examples`` in the default suite, ten times as many in the long mode."""
    return examples * 10 if LONG else examples


FOREIGN_SECRET = "another-apps-secret-0123456789abcdef"
OLD_SECRET = "the-secret-before-rotation-0123456789"


def expired_id(secret: str = SECRET, age: float = 10 * 365 * 86400) -> str:
    """An id signed with ``secret``, issued ``age`` seconds ago."""
    return signed_id(secret, secrets.token_bytes(16), time.time() - age)


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def signed_id(secret: str, random_part: bytes, issued: float) -> str:
    """An id as the server with ``secret`` mints it."""
    body = f"{_b64(random_part)}.{_base36(int(issued))}"
    return f"{body}.{IdentityAuthority._sign(secret.encode(), body)}"


@st.composite
def forged_ids(draw: st.DrawFn, secret: str = SECRET) -> tuple[str, str]:
    """``(kind, id)``: an id the server with ``secret`` (and ``identity_max_age``) never issued.

    Every draw depends on Hypothesis' data alone, so examples replay exactly."""
    genuine = signed_id(secret, draw(st.binary(min_size=16, max_size=16)), time.time())
    kind = draw(st.sampled_from(["random", "tampered", "truncated", "extended", "expired", "foreign"]))
    if kind == "random":
        value = draw(st.text(alphabet=_ID_CHARS + ".", min_size=1, max_size=80))
    elif kind == "tampered":  # one character changed, anywhere but the dots
        positions = [i for i, c in enumerate(genuine) if c != "."]
        at = positions[draw(st.integers(0, len(positions) - 1))]
        shift = draw(st.integers(1, len(_ID_CHARS) - 1))
        value = genuine[:at] + _ID_CHARS[(_ID_CHARS.index(genuine[at]) + shift) % len(_ID_CHARS)] + genuine[at + 1 :]
    elif kind == "truncated":
        value = genuine[: draw(st.integers(1, len(genuine) - 1))]
    elif kind == "extended":
        value = genuine + draw(st.text(alphabet=_ID_CHARS + ".", min_size=1, max_size=4))
    elif kind == "expired":
        value = expired_id(secret)
    else:
        value = IdentityAuthority(FOREIGN_SECRET).mint()
    return kind, value


def open_ws(url: str, **options: Any) -> ClientConnection:
    """A sync WebSocket client, open (close it with ``.close()``)."""
    # the handshake may wait as long as any test waits: a busy machine answers late, not never
    options = {"proxy": None, "open_timeout": PATIENCE, "close_timeout": 1, **options}
    connection: ClientConnection = connect(url, **options).__enter__()
    return connection


class ErrorLog(logging.Handler):
    """Collects ERROR records of the server's loggers (uvicorn's, the frameworks', ours)."""

    LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.asgi", "progressq", "litestar", "starlette")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        return "\n".join(formatter.format(record) for record in self.records)


@contextlib.contextmanager
def error_log() -> Iterator[ErrorLog]:
    """Attach an :class:`ErrorLog` (after the server started: uvicorn reconfigures its loggers)."""
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ErrorLog.LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@contextlib.contextmanager
def progressq_log(level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """progressq's log records at ``level`` and above, caught on progressq's own logger (the
    frameworks reconfigure the root logger's handlers at startup)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("progressq")
    previous = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
