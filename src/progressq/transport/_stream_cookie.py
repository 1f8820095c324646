"""Opening an event stream without the client id in its URL.

A browser's ``EventSource`` cannot set headers, so the id would have to ride in the URL,
and URLs are written in full by access logs: whoever reads the log could act as the client.
Instead the page asks ``POST /api/events`` (with ``X-Client-Id``, like the other routes) and
gets a cookie holding the id, scoped to the stream's path, ``HttpOnly`` and
``SameSite=Strict``, under a name derived from the id (``pq_stream_<key>``); the stream is
then opened with ``?stream=<key>``, which names the cookie and grants nothing by itself.
The cookie is checked like any presented id; it needs no state on the server, so any
process that shares the secret serves the stream. The key is per identity, so tabs of one
browser with different identities do not overwrite each other's cookie.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ("stream_cookie", "stream_key", "streamed_identity")

_PREFIX = "pq_stream_"
_KEY_LENGTH = 16


def stream_key(identity: str) -> str:
    """The cookie's key for ``identity``: a digest, which names it without granting anything."""
    return hashlib.sha256(b"progressq-stream:" + identity.encode("utf-8", "replace")).hexdigest()[:_KEY_LENGTH]


def stream_cookie(scope: MutableMapping[str, Any], identity: str) -> str:
    """The ``Set-Cookie`` value that lets ``GET <this path>?stream=<key>`` name ``identity``."""
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else scope.get("root_path", "") + scope["path"]
    path = path.partition("?")[0]
    secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
    return f"{_PREFIX}{stream_key(identity)}={identity}; Path={path}; HttpOnly; SameSite=Strict{secure}"


def streamed_identity(headers: Mapping[str, str], key: str | None) -> str | None:
    """The id in the cookie that ``?stream=<key>`` names, if the request carries it."""
    if key is None or len(key) != _KEY_LENGTH or not key.isascii() or not key.isalnum():
        return None
    wanted = f"{_PREFIX}{key}"
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == wanted and value:
            return value
    return None
