"""One live connection of an identity, whatever carries it (WebSocket or event stream).

The carrier is a :class:`Peer`: four methods, and how it may be sent to. The connection owns
the rest: the ``connection`` message, snapshot or replay, the bounded outbox, client messages and limits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextvars import copy_context
from types import CoroutineType

import anyio
import msgspec
from anyio.abc import TaskGroup

from progressq.contracts import utc_now
from progressq.errors import BackendUnavailable, TaskAlreadyFinished, TaskNotFound
from progressq.hub import Hub
from progressq.messages import (
    CancelRequest,
    ConnectionMessage,
    ErrorMessage,
    PingRequest,
    PongMessage,
    ResumeRequest,
    ServerMessage,
    SnapshotMessage,
    decode_client_message,
    encode,
)
from progressq.transport import _inline
from progressq.transport._identity import IdentityResolver
from progressq.transport._limits import ConnectionCounts, TokenBucket, oversized_resume_id
from progressq.transport._outbox import IdentitySink, Outbox, SlowConsumer
from progressq.transport._peer import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    Peer,
    PeerGone,
    translate_gone,
)
from progressq.transport._settings import RequestInfo, TransportSettings

__all__ = ("Connection",)

logger = logging.getLogger("progressq.transport")


_WRITER_LINGER = 0.25
"""Seconds a writer that has sent at most ``_FEW`` messages waits for the next before it ends
(the next message starts another). One that has sent more waits up to ``send_timeout`` after
its last send. A busy connection keeps its writer; an idle one has none."""
_FEW = 4
_FINISHED = _inline.FINISHED


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    """Serves one identity's events to one peer until the peer goes or breaks a rule.

    Args:
        socket_id: this connection's own id (minted); also the identity of a connection
            that names none.
    """

    def __init__(
        self,
        hub: Hub,
        settings: TransportSettings,
        identities: IdentityResolver,
        peer: Peer,
        request: RequestInfo,
        socket_id: str,
    ) -> None:
        self._hub = hub
        self._settings = settings
        self._identities = identities
        self._peer = peer
        self._request = request
        self._outbox = Outbox(settings.outbox_size)
        self._bucket = TokenBucket(settings.messages_per_second, settings.message_burst)
        self._socket_id = socket_id
        self._identity = socket_id
        self._sink: IdentitySink | None = None
        self._counts = ConnectionCounts.of(hub)
        self._counted: str | None = None
        self._group: TaskGroup | None = None  # while running: where a writer is started
        self._writing = False  # a writer task runs
        try:  # declared by every peer (``Peer``); one written before they were gets told how
            sends_inline, asgi_send, gone_errors = peer.sends_inline, peer.asgi_send, peer.gone_errors
        except AttributeError as exc:
            raise TypeError(
                f"{type(peer).__name__} does not declare sends_inline, asgi_send and gone_errors: "
                "subclass progressq.transport.PeerDefaults (see WebSocketPeer)"
            ) from exc
        self._inline = settings.send_inline and sends_inline and _inline.available()
        # A send that suspended on the publisher's stack, and what was taken after it: the
        # writer finishes them first. Or what such a send raised: the writer ends with it.
        self._carry: tuple[_inline.Unfinished, list[str]] | None = None
        self._failure: Exception | None = None
        self._inlining = False  # sending on a publisher's stack right now
        # The ASGI server's send when the peer offers it (see ``Peer``): one coroutine less.
        self._asgi_send: Callable[[dict[str, str]], Awaitable[None]] | None = asgi_send
        self._gone_errors: tuple[type[BaseException], ...] = gone_errors

    async def run(self, identity: str, last_seq: int | None = None) -> None:
        """Announce ``identity``, catch the client up (after ``last_seq`` if given), go live."""
        close: _Close | None = None
        farewell: ErrorMessage | None = None  # said just before the close
        try:
            async with anyio.create_task_group() as group:
                # The writer runs only while there is something to send (and a moment
                # after): an idle connection is this one task.
                self._group, self._outbox.on_idle_put = group, self._on_put
                if self._inline:
                    self._outbox.send_now = self._send_now
                try:
                    await self._follow(identity, last_seq, resumed=last_seq is not None)
                    await self._read()
                finally:
                    self._group = self._outbox.on_idle_put = self._outbox.send_now = None
                group.cancel_scope.cancel()
        except* _Close as closing:
            close = closing.exceptions[0]  # type: ignore[assignment]
        except* BackendUnavailable:
            close = _Close(CLOSE_TRY_AGAIN_LATER, "backend unavailable")
            farewell = ErrorMessage(code="backend_unavailable", message="the backend is unavailable; retry later")
        except* (PeerGone, OSError):
            pass
        except* Exception:
            logger.exception("a connection failed")
            close = _Close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            if self._carry is not None:
                unfinished, self._carry = self._carry[0], None
                try:
                    unfinished.close()
                except Exception:  # the send's own cleanup failed: still release the rest
                    logger.warning("a pending send could not be abandoned cleanly", exc_info=True)
            with anyio.CancelScope(shield=True):
                await self._unfollow()
                if close is not None:
                    with anyio.move_on_after(1.0):
                        with contextlib.suppress(PeerGone):
                            if farewell is not None:
                                await self._peer.send(encode(farewell).decode())
                            await self._peer.close(close.code, close.reason)

    # --- sending -------------------------------------------------------------------------

    def _send(self, message: ServerMessage) -> None:
        self._outbox.put(encode(message).decode())

    def _on_put(self) -> None:
        """Something was queued and no writer waits for it."""
        if self._writing or self._inlining or self._group is None:
            return  # the running writer, or the inline loop below, sends it
        if self._inline:
            self._send_inline()
        else:
            self._start_writer()

    def _send_now(self, text: str) -> bool:
        """One message into an empty outbox, sent on the publisher's stack if nothing else
        sends on this connection right now (else False: it is queued as usual)."""
        if self._writing or self._inlining or self._group is None:
            return False
        self._inlining = True
        try:
            # ``_inline.start``, spelled out: one call less on every event of a client that keeps up.
            asgi_send = self._asgi_send
            send = self._peer.send(text) if asgi_send is None else asgi_send({"type": "websocket.send", "text": text})
            if type(send) is not CoroutineType:
                send = _inline.awaiting(send)
            context = copy_context()
            yielded = context.run(next, send.__await__(), _FINISHED)  # ``_inline.first_step``
            if yielded is not _FINISHED:
                self._carry = (_inline.Unfinished(send, yielded, context), [])
                self._start_writer()
        except Exception as exc:  # the peer is gone or broken; never the publisher's problem
            self._failure = translate_gone(exc, self._gone_errors)
            self._start_writer()
        finally:
            self._inlining = False
        return True  # what the send queued meanwhile, the outbox hands to ``_on_put``

    def _send_inline(self) -> None:
        # On the publisher's stack: every send that finishes at once is done here; the
        # first that would wait goes, with the rest of its batch, to a writer task.
        # A send that queues another message on this connection (a wrapper that logs
        # through progressq, say) leaves it to this loop, in order.
        outbox = self._outbox
        self._inlining = True
        try:
            while len(outbox) or outbox.overflowed:
                batch = outbox.take()
                for index, text in enumerate(batch):
                    unfinished = self._start_send(text)
                    if unfinished is not None:
                        self._carry = (unfinished, batch[index + 1 :])
                        self._start_writer()
                        return
        except SlowConsumer:
            self._start_writer()  # which finds the overflow again and closes
        except Exception as exc:  # the peer is gone or broken; never the publisher's problem
            self._failure = translate_gone(exc, self._gone_errors)
            self._start_writer()
        finally:
            self._inlining = False

    def _start_send(self, text: str) -> _inline.Unfinished | None:
        """Send ``text`` on this stack up to the send's first suspension (see ``_inline``)."""
        asgi_send = self._asgi_send  # ``_send_now`` has these two lines too: a call less
        return _inline.start(
            self._peer.send(text) if asgi_send is None else asgi_send({"type": "websocket.send", "text": text})
        )

    def _start_writer(self) -> None:
        if not self._writing and self._group is not None:
            self._writing = True
            self._group.start_soon(self._write)

    async def _write(self) -> None:
        outbox, send = self._outbox, self._peer.send
        timeout = self._settings.send_timeout
        try:
            if self._failure is not None:
                raise self._failure  # PeerGone ends quietly; anything else is logged, close 1011
            while True:
                # One cancel scope per writer. Its deadline is set before each send, so every
                # send has ``send_timeout``; while idle the last send's deadline stays and
                # ends the writer (nothing to set per message). A writer that has sent only a
                # handful (a page's hello and snapshot) ends after ``_WRITER_LINGER`` instead.
                # With inline sends a writer exists only to finish sends that had to wait: it
                # ends as soon as the outbox is empty.
                idle = False
                sent = 0
                with anyio.CancelScope() as scope:
                    if self._carry is not None:
                        (unfinished, rest), self._carry = self._carry, None
                        scope.deadline = anyio.current_time() + timeout
                        try:
                            await unfinished
                        except Exception as exc:  # maybe the framework's own send's, untranslated
                            raise translate_gone(exc, self._gone_errors)  # noqa: B904 (its cause is set)
                        for text in rest:
                            scope.deadline = anyio.current_time() + timeout
                            await send(text)
                    while True:
                        batch = outbox.take()
                        if not batch:
                            idle = True
                            if self._inline:
                                break
                            if sent <= _FEW:
                                scope.deadline = anyio.current_time() + _WRITER_LINGER
                            await outbox.wait()
                            if scope.cancel_called:
                                break  # the writer's time ran out as a message came: sent below
                            idle = False
                            continue
                        for text in batch:
                            scope.deadline = anyio.current_time() + timeout
                            await send(text)
                        sent += len(batch)
                if not idle:
                    raise PeerGone  # a send timed out
                if not len(outbox) and not outbox.overflowed:
                    self._writing = False  # the next put starts a writer again
                    return
        except SlowConsumer:
            raise _Close(CLOSE_SLOW_CONSUMER, "too slow; resume with lastSeq") from None
        except TimeoutError:
            raise PeerGone from None

    def _connection_message(self, recovered: bool | None = None) -> ConnectionMessage:
        return ConnectionMessage(
            socket_id=self._socket_id,
            client_id=self._identity,
            server_time=utc_now(),
            recovered=msgspec.UNSET if recovered is None else recovered,
        )

    # --- following an identity -------------------------------------------------------------

    async def _follow(self, identity: str, last_seq: int | None, *, resumed: bool) -> None:
        """Announce ``identity`` and deliver its events from now on.

        With ``last_seq``: exactly the missed events when history holds them
        (``recovered: true``), else a snapshot. A resume says ``recovered`` either way.
        """
        if not self._counts.add(identity, self._settings.max_connections_per_identity):
            raise _Close(CLOSE_POLICY_VIOLATION, "too many connections")
        self._counted = identity
        registry = self._hub.registry
        sink = IdentitySink(self._outbox)
        sink.on_resync = self._resync_soon
        self._identity, self._sink = identity, sink
        await registry.attach(identity, sink)
        if last_seq is not None:
            missed = await registry.events_after(identity, last_seq)
            if missed is not None:
                self._send(self._connection_message(recovered=True))
                sink.go_live(last_seq, list(missed), {})
                return
        self._send(self._connection_message(recovered=False if resumed else None))
        await self._snapshot(identity, sink)

    async def _snapshot(self, identity: str, sink: IdentitySink) -> None:
        # The sequence number is read before the tasks, so the snapshot is at least as new
        # as ``seq``; the sink repairs live events that are older than the snapshot.
        seq = await self._hub.registry.current_seq(identity)
        # Bounded: a resume costs at most ``snapshot_size`` tasks, however many the identity has.
        size = self._settings.snapshot_size
        records = await self._hub.list(owner=identity, limit=size + 1)
        complete = len(records) <= size
        records = records[:size]
        views = [record.view() for record in records]
        self._send(SnapshotMessage(tasks=views, seq=seq, recovered=False, complete=complete))
        sink.go_live(seq, [], {r.id: (r.revision, encode(v)) for r, v in zip(records, views, strict=True)})

    def _resync_soon(self) -> None:
        """The backend lost the identity's history: send a fresh snapshot (``recovered:
        false``), from which ``seq`` counts on."""
        sink, group = self._sink, self._group
        if sink is not None and group is not None:
            group.start_soon(self._resync, sink)

    async def _resync(self, sink: IdentitySink) -> None:
        if sink is self._sink:
            await self._snapshot(self._identity, sink)

    async def _unfollow(self) -> None:
        counted, self._counted = self._counted, None
        if counted is not None:
            self._counts.remove(counted)
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.active = False
            try:
                await self._hub.registry.detach(self._identity, sink)
            except Exception:
                logger.warning("could not detach a connection", exc_info=True)

    # --- receiving -----------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            frame = await self._peer.receive()
            size = len(frame) if isinstance(frame, bytes) else len(frame.encode())
            if size > self._settings.max_frame_bytes:
                logger.info("closing a connection of %s: a %d-byte frame", self._request.client, size)
                raise _Close(CLOSE_TOO_BIG, "frame too large")
            if not self._bucket.take():
                logger.info("closing a connection of %s: message rate exceeded", self._request.client)
                raise _Close(CLOSE_POLICY_VIOLATION, "too many messages")
            if frame in ("ping", b"ping"):
                self._send(PongMessage(server_time=utc_now()))
                continue
            try:
                message = decode_client_message(frame)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                if oversized_resume_id(exc):  # a forged id, whatever its length: as forged ids are
                    raise _Close(CLOSE_POLICY_VIOLATION, "unknown client id") from None
                self._send(ErrorMessage(code="invalid_message", message=str(exc)[:200]))
                continue
            await self._handle(message)

    async def _handle(self, message: PingRequest | ResumeRequest | CancelRequest) -> None:
        match message:
            case PingRequest():
                self._send(PongMessage(server_time=utc_now()))
            case ResumeRequest(client_id=client_id, last_seq=last_seq):
                if not await self._identities.accepts(self._request, client_id):
                    raise _Close(CLOSE_POLICY_VIOLATION, "unknown client id")
                await self._unfollow()
                self._outbox.clear()  # events of the identity just left
                await self._follow(client_id, last_seq, resumed=True)
            case CancelRequest(task_id=task_id):
                try:
                    await self._hub.cancel(task_id, owner=self._identity)
                except TaskNotFound:
                    self._send(ErrorMessage(code="not_found", message="no such task"))
                except TaskAlreadyFinished:
                    self._send(ErrorMessage(code="already_finished", message="the task has already finished"))
