"""The event-stream (SSE) transport: the WebSocket's events over ``GET /api/events``.

For clients behind proxies that drop WebSockets. The same messages as the WebSocket, as
``event: <type>``, ``id: <seq>`` (events and snapshots) and ``data: <json>``; a browser's
``EventSource`` reconnects by itself and sends ``Last-Event-ID``, which resumes exactly
like a WebSocket ``resume`` with ``lastSeq``. Identification is the HTTP routes' (headers),
plus, because ``EventSource`` cannot set headers, a cookie that ``POST /api/events`` sets
and ``?stream=<key>`` names (see ``_stream_cookie``), or the older ``clientId`` query
parameter, which access logs write down.

It is a plain ASGI app, so each adapter only mounts it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio

from progressq.errors import ForbiddenIdentity
from progressq.hub import Hub
from progressq.messages import encode
from progressq.transport._connection import Connection
from progressq.transport._identity import IdentityResolver, origin_allowed
from progressq.transport._limits import ConnectionCounts
from progressq.transport._peer import PeerDefaults, PeerGone
from progressq.transport._settings import RequestInfo, TransportSettings
from progressq.transport._shutdown import end_on_server_stop
from progressq.transport._stream_cookie import stream_cookie, stream_key, streamed_identity
from progressq.transport.http import Response, error_response, forbidden_response, identity_required_response

__all__ = ("EventStreamSession",)

logger = logging.getLogger("progressq.transport")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # proxies must not buffer a live stream
    # Compression middleware buffers what it compresses, which holds a live stream back;
    # an encoding already declared makes them pass the response through (Starlette's
    # GZipMiddleware in every version, including those that do not exclude event streams).
    (b"content-encoding", b"identity"),
]


def sse_frame(text: str) -> bytes:
    """One message as an SSE event. ``text`` is a server message as encoded by progressq:
    ``{"type":"<type>"`` first, and ``"seq":N`` next where the message has one."""
    end = text.index('"', 9)
    frame = f"event: {text[9:end]}\n"
    if text.startswith(',"seq":', end + 1):
        start = end + 8
        stop = start
        while text[stop].isdigit():
            stop += 1
        frame += f"id: {text[start:stop]}\n"
    return f"{frame}data: {text}\n\n".encode()


class _EventStreamPeer(PeerDefaults):
    """A :class:`Peer` over an ASGI HTTP response that stays open: never sent to inline (its
    ``send`` takes a lock, shared with the keep-alive), and framed by ``send`` alone (the
    :class:`PeerDefaults`)."""

    def __init__(self, receive: Receive, send: Send, keepalive: float) -> None:
        self._receive = receive
        self._send = send
        self._keepalive = keepalive
        self._lock = anyio.Lock()  # the writer and the keep-alive both send
        self._ended = False

    async def accept(self) -> None:
        await self._deliver({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await self._chunk(b"retry: 2000\n\n")

    async def receive(self) -> str | bytes:
        # A client cannot speak on an event stream: wait for it to leave, keeping it alive.
        while True:
            with anyio.move_on_after(self._keepalive):
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise PeerGone
                continue
            await self._chunk(b": keep-alive\n\n")

    async def send(self, text: str) -> None:
        await self._chunk(sse_frame(text))

    async def close(self, code: int, reason: str = "") -> None:
        # An event stream has no close code: it ends, and the client reconnects with
        # Last-Event-ID (an EventSource does so by itself).
        if not self._ended:
            self._ended = True
            await self._deliver({"type": "http.response.body", "body": b"", "more_body": False})

    async def _chunk(self, data: bytes) -> None:
        await self._deliver({"type": "http.response.body", "body": data, "more_body": True})

    async def _deliver(self, message: MutableMapping[str, Any]) -> None:
        async with self._lock:
            try:
                await self._send(message)
            except (OSError, RuntimeError) as exc:
                raise PeerGone from exc


def request_from_scope(scope: Scope) -> RequestInfo:
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    client = scope.get("client")
    return RequestInfo(headers=headers, client=client[0] if client else None, raw=scope)


class EventStreamSession:
    """Serves ``GET /api/events`` for one hub, as an ASGI app.

    Args:
        keepalive: seconds between keep-alive comments on an idle stream.
    """

    def __init__(self, hub: Hub, settings: TransportSettings, *, keepalive: float = 15.0) -> None:
        self.hub = hub
        self.settings = settings
        self.keepalive = keepalive
        self.identities = IdentityResolver(hub.identities, settings.identify)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = request_from_scope(scope)
        try:
            refusal = await self._refusal(scope, request)
        except Exception:  # the details go to the log, never to the client
            logger.exception("an event stream request failed")
            refusal = error_response(500, "internal_error", "the server could not handle this request")
        if isinstance(refusal, Response):
            await _reply(send, refusal)
            return
        if scope.get("method") == "POST":  # the cookie for a stream (see _stream_cookie)
            await _reply(send, await self._stream_cookie(scope, request))
            return
        identity, last_seq = refusal
        peer = _EventStreamPeer(receive, send, self.keepalive)
        socket_id = self.hub.identities.mint()
        connection = Connection(self.hub, self.settings, self.identities, peer, request, socket_id)
        try:
            await peer.accept()
        except PeerGone:
            return
        with end_on_server_stop():  # a stream never ends by itself; a stopping server ends it
            await connection.run(identity or socket_id, last_seq)
        # ``run`` ends when the client left or broke a rule; end the response either way.
        with contextlib.suppress(PeerGone):
            await peer.close(1000)

    async def _refusal(self, scope: Scope, request: RequestInfo) -> Response | tuple[str | None, int | None]:
        if scope.get("method", "GET") not in ("GET", "POST"):
            return error_response(405, "method_not_allowed", "use GET", headers={"Allow": "GET, POST"})
        if not origin_allowed(request, self.settings):
            logger.info("refused an event stream from origin %r", request.headers.get("origin"))
            return error_response(403, "origin_not_allowed", "this origin may not open an event stream")
        if scope.get("method") == "POST":
            return None, None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        # ``clientId`` in the URL is written by access logs; the stream cookie is not.
        presented = (query.get("clientId") or [None])[0] or streamed_identity(
            request.headers, (query.get("stream") or [None])[0]
        )
        try:
            identity = await self.identities.caller(request, presented)
        except ForbiddenIdentity:
            return forbidden_response()
        if identity is None and self.settings.require_identity:
            return identity_required_response()
        if identity is not None and ConnectionCounts.of(self.hub).full(
            identity, self.settings.max_connections_per_identity
        ):
            return error_response(
                429,
                "too_many_connections",
                "this client id has too many open connections",
                headers={"Retry-After": "5"},
            )
        last = request.headers.get("last-event-id") or (query.get("lastEventId") or [None])[0]
        last_seq = int(last) if last is not None and last.isascii() and last.isdigit() and len(last) < 19 else None
        if identity is None and last_seq is not None:
            last_seq = None  # a new identity has nothing to resume
        return identity, last_seq

    async def _stream_cookie(self, scope: Scope, request: RequestInfo) -> Response:
        try:
            if self.settings.require_identity:
                identity = await self.identities.caller(request)
                if identity is None:
                    return identity_required_response()
            else:
                identity = await self.identities.caller_or_new(request)
        except ForbiddenIdentity:
            return forbidden_response()
        return Response(
            200,
            encode({"clientId": identity, "stream": stream_key(identity)}),
            {"Set-Cookie": stream_cookie(scope, identity), "Cache-Control": "no-store"},
        )


async def _reply(send: Send, response: Response) -> None:
    headers = [(b"content-type", response.media_type.encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
