"""The PostgreSQL client registry: per-identity seq, history table and LISTEN/NOTIFY delivery."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from progressq._logonce import fingerprint
from progressq.backends.postgres._common import NOTIFY_LIMIT, Connection, Names, Pool, read, unavailable, writing
from progressq.backends.postgres._listener import Listener
from progressq.contracts import Event, EventSink, RegistryStatistics
from progressq.errors import BackendUnavailable
from progressq.messages import EventType

logger = logging.getLogger("progressq.postgres")

_KINDS: dict[str, EventType] = {"taskQueued": "taskQueued", "taskProgress": "taskProgress"}
# An event numbered, stored and notified in one statement, after a CTE named ``go`` that has a
# row when the event is to go out: the identity's seq is bumped (its row locked until commit:
# one publisher at a time per identity), the event stored, the history trimmed on every 100th
# event (it keeps n to n + 100), and ``NOTIFIED`` (in the final select) sends it at commit,
# its payload built around the seq.
NUMBERED = """numbered AS (
        INSERT INTO {s}.identities AS i (identity, seq, last_event_at) SELECT %(identity)s, 1, now() FROM go
        ON CONFLICT (identity) DO UPDATE SET seq = i.seq + 1, last_event_at = now()
        RETURNING seq
    ), stored AS (
        INSERT INTO {s}.events (identity, seq, kind, task_id, revision, task_json)
        SELECT %(identity)s, seq, %(kind)s, %(task_id)s, %(revision)s, %(task_json)s FROM numbered
    ), trimmed AS (
        DELETE FROM {s}.events WHERE identity = %(identity)s
            AND seq <= (SELECT seq FROM numbered) - %(keep)s AND (SELECT seq FROM numbered) %% 100 = 0
    )"""
NOTIFIED = "pg_notify(%(channel)s, %(head)s || numbered.seq || %(tail)s)"
# An event about a stored task goes out only if that task has not moved on (no newer revision
# stored, this one not yet published); any other always.
_PUBLISH = f"""WITH fresh AS (
        UPDATE {{s}}.tasks SET published = %(revision)s
        WHERE id = %(task_id)s AND revision <= %(revision)s AND published < %(revision)s
        RETURNING 1
    ), go AS (
        SELECT 1 WHERE EXISTS (SELECT 1 FROM fresh) OR NOT EXISTS (SELECT 1 FROM {{s}}.tasks WHERE id = %(task_id)s)
    ), {NUMBERED}
    SELECT numbered.seq, {NOTIFIED} FROM numbered"""


class _Notice(msgspec.Struct, array_like=True):
    """A notification's payload: the event itself, or (too large) where to read it."""

    identity: str
    seq: int
    kind: str = ""
    task_id: str = ""
    revision: int = 0
    task_json: msgspec.Raw = msgspec.Raw(b"null")


_notice_decoder = msgspec.json.Decoder(_Notice)
_notice_encoder = msgspec.json.Encoder()


class _Identity:
    """The live state of one identity attached in this process."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.sinks: set[EventSink] = set()
        self.last: int | None = None  # last seq delivered to the sinks
        self.ready = anyio.Event()

    def deliver(self, event: Event) -> None:
        self.last = event.seq
        for sink in tuple(self.sinks):
            try:
                sink.deliver(event)
            except Exception:
                logger.exception("a sink of identity %s failed to take event %d", fingerprint(self.identity), event.seq)


class PostgresClientRegistry:
    """Sequencing, history and live delivery on PostgreSQL. Made by :class:`PostgresBackend`."""

    def __init__(
        self,
        pool: Pool,
        names: Names,
        conninfo: str,
        *,
        history_size: int,
        history_ttl: float,
        attach_timeout: float,
    ) -> None:
        self._pool = pool
        self._names = names
        self._history_size = history_size
        self.history_ttl = history_ttl
        self._attach_timeout = attach_timeout
        self._identities: dict[str, _Identity] = {}
        self.listener = Listener(conninfo, (names.events,), self._notified, self._caught_up, needed=False)
        sql = names.sql
        self._publish_sql = sql(_PUBLISH)
        self._current_sql = sql("SELECT seq FROM {s}.identities WHERE identity = %s")
        self._after_sql = sql(
            "SELECT seq, kind, task_id, revision, task_json FROM {s}.events "
            "WHERE identity = %s AND seq > %s AND seq <= %s ORDER BY seq"
        )

    async def publish(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> Event:
        """Number, store and notify one event, in one statement.

        Returns the event; its ``seq`` is 0 when it was dropped because its task has
        moved on (a newer revision is stored, or this one was already published).
        """
        with writing("publish"):
            async with self._pool.connection() as conn:
                return await self.publish_in(conn, identity, kind, task_id, revision, task_json)

    async def publish_in(
        self, conn: Connection, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes
    ) -> Event:
        """:meth:`publish` inside the caller's transaction on ``conn`` (the queue's save or
        enqueue): the event is numbered and sent only if that transaction commits."""
        args = self.event_args(identity, kind, task_id, revision, task_json)
        row = await (await conn.execute(self._publish_sql, args)).fetchone()
        if row is None:
            return Event(0, kind, task_id, revision, task_json)  # its task moved on: dropped
        return Event(int(row[0]), kind, task_id, revision, task_json)

    def event_args(
        self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes
    ) -> dict[str, Any]:
        """The parameters of :data:`NUMBERED` and :data:`NOTIFIED` for one event."""
        head = _notice_encoder.encode([identity])[:-1] + b","  # '["identity",' then the seq
        tail = b"," + _notice_encoder.encode([kind, task_id, revision, msgspec.Raw(task_json)])[1:]
        if len(head) + len(tail) + 20 > NOTIFY_LIMIT:
            tail = b"]"  # a reference: listeners read the event from the history
        return {
            "identity": identity,
            "kind": kind,
            "task_id": task_id,
            "revision": revision,
            "task_json": task_json,
            "keep": self._history_size,
            "channel": self._names.events,
            "head": head.decode(),
            "tail": tail.decode(),
        }

    async def attach(self, identity: str, sink: EventSink) -> None:
        state = self._identities.get(identity)
        created = state is None
        if state is None:
            state = self._identities[identity] = _Identity(identity)
        state.sinks.add(sink)
        try:
            with anyio.fail_after(self._attach_timeout):
                if created:
                    self.listener.need()
                    # While the listening connection is down, say so at once rather than
                    # after the whole timeout (a client of a server whose database is gone must hear it).
                    while not self.listener.listening:
                        if self.listener.broken:
                            raise BackendUnavailable("PostgreSQL is unavailable (the listening connection is lost)")
                        await anyio.sleep(0.01)
                    state.last = await self.current_seq(identity)  # listening already: nothing after it is missed
                    state.ready.set()
                else:
                    await state.ready.wait()
        except TimeoutError as exc:
            await self.detach(identity, sink)
            raise BackendUnavailable("PostgreSQL did not start listening in time") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.detach(identity, sink)
            raise

    async def detach(self, identity: str, sink: EventSink) -> None:
        state = self._identities.get(identity)
        if state is None:
            return
        state.sinks.discard(sink)
        if not state.sinks:
            del self._identities[identity]

    async def current_seq(self, identity: str) -> int:
        row = await read(self._pool, "current_seq", self._current_sql, (identity,))
        return 0 if row is None else int(row[0])

    async def events_after(self, identity: str, seq: int) -> Sequence[Event] | None:
        with unavailable("events_after"):
            async with self._pool.connection() as conn, conn.transaction():
                # One snapshot for both reads: repeatable read
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = await (await conn.execute(self._current_sql, (identity,))).fetchone()
                current = 0 if row is None else int(row[0])
                if seq >= current:
                    return None if seq > current else []  # past the end: the client knows of more
                rows = await (await conn.execute(self._after_sql, (identity, seq, current))).fetchall()
        events = [Event(int(r[0]), _KINDS[r[1]], r[2], int(r[3]), bytes(r[4])) for r in rows]
        if len(events) != current - seq or events[0].seq != seq + 1:
            return None
        return events

    def statistics(self) -> RegistryStatistics:
        connections = sum(len(state.sinks) for state in self._identities.values())
        return RegistryStatistics(connections=connections, clients=len(self._identities))

    async def _notified(self, channel: str, payload: str) -> None:
        try:
            notice = _notice_decoder.decode(payload)
        except msgspec.DecodeError:
            logger.warning("ignored a notification on %s that is not an event", channel)
            return
        state = self._identities.get(notice.identity)
        if state is None or state.last is None or notice.seq <= state.last:
            return  # not attached here (or not ready), or already delivered
        if notice.seq > state.last + 1 or not notice.kind:  # a gap, or a reference to read
            await self._fill(state)
            return
        state.deliver(Event(notice.seq, _KINDS[notice.kind], notice.task_id, notice.revision, bytes(notice.task_json)))

    async def _caught_up(self) -> None:
        """After a reconnect: what each attached identity missed, from its history."""
        for state in tuple(self._identities.values()):
            if state.last is not None:
                await self._fill(state)

    async def _fill(self, state: _Identity) -> None:
        assert state.last is not None
        try:
            events = await self.events_after(state.identity, state.last)
        except BackendUnavailable as exc:
            logger.warning("identity %s: could not read the missed events: %s", fingerprint(state.identity), exc)
            return
        if events is None:
            await self._resync(state)
            return
        for event in events:
            if state.last is not None and event.seq > state.last:
                state.deliver(event)

    async def _resync(self, state: _Identity) -> None:
        """History cannot say what was missed: every sink starts again from a snapshot."""
        try:
            state.last = await self.current_seq(state.identity)
        except BackendUnavailable as exc:
            logger.warning("identity %s: could not resync: %s", fingerprint(state.identity), exc)
            return
        logger.warning(
            "identity %s: the event history has a gap; its connections resync from a snapshot",
            fingerprint(state.identity),
        )
        for sink in tuple(state.sinks):
            try:
                sink.resync()
            except Exception:
                logger.exception("a sink of identity %s failed to resync", fingerprint(state.identity))
