"""Every call of the backend's Redis scripts, built in one place.

The whole script (``_scripts``: ``scripts/operations.lua`` after the queue's and the commits'
parts) holds every operation. Most calls name the operation, its keys and its arguments, and
the script binds the names (see its header). The calls made many at a time (the worker's
commits, the submits) are rows instead, sent a shard's batch at a time in one script call
(``_Calls.send``): positional, as laid out in ``_ROW_LAYOUTS``, the same lists the script reads
them by; a batch of progress rows only goes to the progress script (``scripts/progress.lua``).
This module is the only place that knows what each operation takes: the queue, the registry and
the backend ask it for a call or a row and run it. A combined operation takes the union of the
named arguments of the operations it combines; a name they share means one value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from progressq.backends.redis._common import _GROUP, _Keys, _record_encoder, event_text, tick_text
from progressq.backends.redis._scripts import _Call, _Named, _Value, progress_script_text, whole_script_text
from progressq.contracts import Lease, TaskRecord
from progressq.messages import EventType

__all__ = ("_ROW_LAYOUTS", "_SETTINGS", "_SHARD_KEYS", "_Call", "_Calls", "_Row")

# A batched call: the operation, the keys it names (besides the shard's own) and its other
# fields, in the order of its layout.
_Row = tuple[str, tuple[str, ...], list[_Value]]

# The shard's own keys, the first of every batch's KEYS, in this order (`_Keys` attributes).
_SHARD_KEYS = ("counters", "unfinished", "running", "wake", "dead", "stream", "ring", "delayed", "stamps")
# The shard's settings, the first of every batch's arguments after 'batch', in this order.
_SETTINGS = (
    "capacity", "retention", "history_size", "trim_above", "expiry", "refresh", "group", "cancel_channel",
    "publish_command", "stamps", "task_prefix",
)  # fmt: skip

# The settings that progress rows use (the progress script has them in its text), and those of
# them that the scripts read as numbers.
_PROGRESS_SETTINGS = (
    "history_size", "trim_above", "expiry", "refresh", "cancel_channel", "publish_command", "task_prefix",
)  # fmt: skip
_NUMBERS = ("trim_above", "refresh")

# Each batched operation's row, field by field, as the script reads it (its ``ROW`` lines; a test
# checks that they agree). The fields after ``op`` up to ``history`` are keys, put in KEYS; the
# others arguments, every one a string (a flag '1' or ''; a number as text: Redis formats a Lua
# number with snprintf, a tenth of its work per commit).
_NEW_TASK_ROW = (
    "op", "task", "owner_tasks", "waiting", "unique", "seq", "history",
    "task_id", "record", "owner", "created", "revision", "run_at", "unique_key", "limit", "event", "channel",
)  # fmt: skip
_ROW_LAYOUTS: dict[str, tuple[str, ...]] = {
    "commit": (
        "op", "task", "owner_tasks", "waiting", "seq", "history",
        "attempt", "record", "revision", "status", "event", "channel", "task_id", "terminal", "owner", "finish",
        "entry",
    ),
    # a commit that neither ends its task nor acknowledges it: a `commit` row's first fields
    "progress": ("op", "task", "seq", "history", "attempt", "record", "revision", "status", "event", "channel"),
    "submit": _NEW_TASK_ROW,
    "enqueue": _NEW_TASK_ROW,
}  # fmt: skip


class _Calls:
    """The script registered on one client, and each of its operations' calls, for the keys
    of one shard.

    With ``sharded_pubsub`` the scripts publish with ``SPUBLISH`` (Redis Cluster's sharded
    pub/sub: a message stays on the nodes of its channel's slot) instead of ``PUBLISH``. With
    ``stamps`` (several shards) they note when each owner goes to the back of the shard's
    ring, for ``due``.
    """

    def __init__(
        self,
        client: Any,
        keys: _Keys,
        *,
        capacity: int,
        retention: int,
        history_size: int,
        history_ttl: int,
        sharded_pubsub: bool = False,
        stamps: bool = False,
    ) -> None:
        self.script = client.register_script(whole_script_text())
        self._keys = keys
        # with several shards, the ring's stamps (see the script's `due`); absent, none are kept
        self._stamps: _Named = {"stamps": keys.stamps} if stamps else {}
        # absent, the script publishes with PUBLISH: a single Redis's calls stay as they were
        self._publishing: _Named = {"publish_command": "SPUBLISH"} if sharded_pubsub else {}
        self._capacity = str(capacity)
        self._retention = str(retention)
        self._history_size = str(history_size)
        # A commit sets an identity's seq and history to expire `expiry` seconds on only when its
        # task has not for `refresh` seconds (the script's `commit`): kept history_ttl to expiry.
        refresh = max(1, min(60, history_ttl // 10))
        self._expiry = str(history_ttl + refresh)
        # what every batch of this shard shares (the script's `s`), in the order of _SETTINGS
        settings = {
            "capacity": self._capacity,
            "retention": self._retention,
            "history_size": self._history_size,
            # the history is trimmed back to history_size once it holds a tenth more (`emit`)
            "trim_above": str(history_size + max(1, history_size // 10)),
            "expiry": self._expiry,
            "refresh": str(refresh),
            "group": _GROUP,
            "cancel_channel": keys.cancel_channel,
            "publish_command": "SPUBLISH" if sharded_pubsub else "PUBLISH",
            "stamps": "1" if stamps else "",
            "task_prefix": keys.task(""),
        }
        self._batch_head: list[_Value] = ["batch", *(settings[name] for name in _SETTINGS)]
        # what progress rows use of them, in the progress script's text (its numbers as numbers)
        progress = {name: int(settings[name]) if name in _NUMBERS else settings[name] for name in _PROGRESS_SETTINGS}
        text = progress_script_text(progress)
        self.progress_script = client.register_script(text)
        self._shard_keys = [getattr(keys, name) for name in _SHARD_KEYS]
        self._owner_keys: dict[str, tuple[str, str, str, str, str, str]] = {}

    def _of_owner(self, owner: str) -> tuple[str, str, str, str, str, str]:
        """An owner's keys and channel (owner_tasks, waiting, unique, seq, history, channel),
        made once: a busy worker names the same owners' keys over and over."""
        known = self._owner_keys.get(owner)
        if known is None:
            if len(self._owner_keys) >= 4096:
                self._owner_keys.clear()  # bounded: the owners of the moment come back at once
            keys = self._keys
            known = self._owner_keys[owner] = (
                keys.owner(owner),
                keys.waiting(owner),
                keys.unique(owner),
                keys.seq(owner),
                keys.history(owner),
                keys.channel(owner),
            )
        return known

    # --- batched: rows, sent a shard's batch at a time ------------------------------------

    def send(self, rows: Sequence[_Row]) -> Awaitable[Any]:
        """One script call for ``rows`` (all of this shard): their answers, in order, each a
        row's answer or its error (an exception among the answers). Where Redis lost the
        script, it is loaded and the call made again (nothing of it ran). Progress rows only go
        to the progress script, without their names (the same answers)."""
        if rows and all(op == "progress" for op, _, _ in rows):
            keys: list[str] = []
            args: list[_Value] = []
            for _, row_keys, fields in rows:
                keys += row_keys
                args += fields
            progress: Awaitable[Any] = self.progress_script(keys=keys, args=args)
            return progress
        keys = list(self._shard_keys)
        args = list(self._batch_head)
        for op, row_keys, fields in rows:
            keys += row_keys
            args.append(op)
            args += fields
        sent: Awaitable[Any] = self.script(keys=keys, args=args)
        return sent

    def commit_row(
        self, lease: Lease, record: TaskRecord, view: bytes, *, finish: bool, restated: bool = True, tick: bool = False
    ) -> _Row:
        """Save, the ``taskProgress`` publish and (with ``finish``) the acknowledgement, as a row
        (layout ``commit``; ``progress`` when the task neither ends nor is acknowledged). Not
        ``restated`` (this attempt stored that status last), a progress row leaves it out; with
        ``tick`` (the record differs from the one this attempt stored whole last only in its
        progress, message and revision), it stores only those (``tick_text``)."""
        owner = record.owner
        owner_tasks, waiting, _, seq, history, channel = self._of_owner(owner)
        ends = finish or record.finished
        fields: list[_Value] = [
            str(lease.record.attempt),
            tick_text(record) if tick and not ends else _record_encoder.encode(record),
            str(record.revision),
            record.status if restated or ends else "",
            event_text("taskProgress", record.id, record.revision, view),
            channel,
        ]
        task = self._keys.task(record.id)
        if not ends:
            return "progress", (task, seq, history), fields
        fields += [record.id, "1" if record.finished else "", owner, "1" if finish else "", lease.token]
        return "commit", (task, owner_tasks, waiting, seq, history), fields

    def submit_row(self, record: TaskRecord, max_unfinished: int | None) -> _Row:
        """``enqueue`` and the ``taskQueued`` publish in one step, under the owner's limit (layout
        ``submit``)."""
        return self._new_task_row("submit", record, max_unfinished or 0)

    def enqueue_row(self, record: TaskRecord) -> _Row:
        """Store and queue a task, announcing nothing (layout ``enqueue``)."""
        return self._new_task_row("enqueue", record, 0)

    def _new_task_row(self, op: str, record: TaskRecord, limit: int) -> _Row:
        owner_tasks, waiting, unique, seq, history, channel = self._of_owner(record.owner)
        fields: list[_Value] = [
            record.id,
            _record_encoder.encode(record),
            record.owner,
            str(int(record.created_at.timestamp() * 1000)),
            str(record.revision),
            _ms(record),
            record.key or "",
            str(limit),
            event_text("taskQueued", record.id, record.revision, record.view_json()) if op == "submit" else "",
            channel,
        ]
        return op, (self._keys.task(record.id), owner_tasks, waiting, unique, seq, history), fields

    def _call(self, op: str, keys: _Named, args: _Named) -> _Call:
        return _Call(self.script, op, keys, args)

    # --- the queue's --------------------------------------------------------------------

    def save(self, lease: Lease, record: TaskRecord) -> _Call:
        return self._call("save", self._save_keys(record), self._save_args(lease, record))

    def release(self, lease: Lease, record: TaskRecord) -> _Call:
        keys: _Named = {
            "task": self._keys.task(record.id),
            "stream": self._keys.stream,
            "counters": self._keys.counters,
            "running": self._keys.running,
            "waiting": self._keys.waiting(record.owner),
            "ring": self._keys.ring,
            "wake": self._keys.wake,
            "delayed": self._keys.delayed,
            **self._stamps,
        }
        args: _Named = {
            "attempt": str(lease.record.attempt),
            "record": _record_encoder.encode(record),
            "revision": str(record.revision),
            "group": _GROUP,
            "task_id": record.id,
            "owner": record.owner,
            "run_at": _ms(record),
        }
        return self._call("release", keys, args)

    def finish(self, lease: Lease) -> _Call:
        keys = {"task": self._keys.task(lease.record.id), "stream": self._keys.stream}
        return self._call("finish", keys, {"attempt": str(lease.record.attempt), "group": _GROUP, "entry": lease.token})

    def extend(self, task_id: str, attempt: int, consumer: str, entry: str) -> _Call:
        keys = {"task": self._keys.task(task_id), "stream": self._keys.stream}
        args = {"attempt": str(attempt), "group": _GROUP, "consumer": consumer, "entry": entry}
        return self._call("extend", keys, args)

    def cancel(self, current: TaskRecord, cancelled: TaskRecord) -> _Call:
        """Cancel ``current`` (as read) into ``cancelled``, unless it changed meanwhile."""
        owner = current.owner
        keys: _Named = {
            "task": self._keys.task(current.id),
            "counters": self._keys.counters,
            "owner_tasks": self._keys.owner(owner),
            "unfinished": self._keys.unfinished,
            "waiting": self._keys.waiting(owner),
            "ring": self._keys.ring,
            "delayed": self._keys.delayed,
            **self._stamps,
        }
        args: _Named = {
            "owner": owner,
            "expected_revision": str(current.revision),
            "record": _record_encoder.encode(cancelled),
            "revision": str(cancelled.revision),
            "retention": self._retention,
            "cancel_channel": self._keys.cancel_channel,
            "task_id": current.id,
            **self._publishing,
        }
        return self._call("cancel", keys, args)

    def claim_many(self, consumer: str, entries: Sequence[tuple[str, str]]) -> _Call:
        """Claim reclaimed stream ``entries`` (entry id, task id) for ``consumer``."""
        keys = {"stream": self._keys.stream, "counters": self._keys.counters, "running": self._keys.running}
        args = {"group": _GROUP, "consumer": consumer, "count": str(len(entries))}
        for n, (entry, task_id) in enumerate(entries, 1):  # a list, named item by item
            keys[f"task {n}"] = self._keys.task(task_id)
            args[f"entry {n}"] = entry
        return self._call("claim_many", keys, args)

    def take(self, consumer: str, limit: int, running_per_owner: int | None) -> _Call:
        keys: _Named = {
            "stream": self._keys.stream,
            "counters": self._keys.counters,
            "ring": self._keys.ring,
            "running": self._keys.running,
            "delayed": self._keys.delayed,
            **self._stamps,
        }
        args: _Named = {
            "group": _GROUP,
            "consumer": consumer,
            "count": str(limit),
            "task_prefix": self._keys.task(""),
            "waiting_prefix": self._keys.waiting_prefix,
            "cap": str(running_per_owner or 0),
        }
        return self._call("take", keys, args)

    def due(self, limit: int, running_per_owner: int | None) -> _Call:
        """The owners a ``take`` would serve now (at most ``limit``), with their stamps."""
        keys: _Named = {
            "ring": self._keys.ring,
            "running": self._keys.running,
            "delayed": self._keys.delayed,
            "stamps": self._keys.stamps,
        }
        args: _Named = {
            "task_prefix": self._keys.task(""),
            "waiting_prefix": self._keys.waiting_prefix,
            "cap": str(running_per_owner or 0),
            "count": str(limit),
        }
        return self._call("due", keys, args)

    def prune(self, leaving: str, idle_ms: int) -> _Call:
        """Remove dead consumers (idle over ``idle_ms``) and ``leaving`` ('' for none)."""
        args = {"group": _GROUP, "leaving": leaving, "idle_ms": str(idle_ms)}
        return self._call("prune", {"stream": self._keys.stream}, args)

    # --- the registry's -----------------------------------------------------------------

    def publish(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> _Call:
        keys = self._publish_keys(identity, task_id)
        return self._call("publish", keys, self._publish_args(identity, kind, task_id, revision, task_json))

    def events_after(self, identity: str, seq: int) -> _Call:
        """The identity's seq and the events after ``seq`` its history holds, read together."""
        keys = {"seq": self._keys.seq(identity), "history": self._keys.history(identity)}
        return self._call("after", keys, {"seq": str(seq)})

    # --- the parts ----------------------------------------------------------------------

    def _save_keys(self, record: TaskRecord) -> _Named:
        return {
            "task": self._keys.task(record.id),
            "counters": self._keys.counters,
            "owner_tasks": self._keys.owner(record.owner),
            "unfinished": self._keys.unfinished,
            "running": self._keys.running,
            "waiting": self._keys.waiting(record.owner),
            "wake": self._keys.wake,
            "dead": self._keys.dead,
        }

    def _save_args(self, lease: Lease, record: TaskRecord) -> _Named:
        return {
            "attempt": str(lease.record.attempt),
            "record": _record_encoder.encode(record),
            "revision": str(record.revision),
            "status": record.status,
            "terminal": "1" if record.finished else "0",
            "retention": self._retention,
            "cancel_channel": self._keys.cancel_channel,
            "task_id": record.id,
            "owner": record.owner,
            **self._publishing,
        }

    def _publish_keys(self, identity: str, task_id: str) -> _Named:
        keys = self._keys
        return {"seq": keys.seq(identity), "history": keys.history(identity), "task": keys.task(task_id)}

    def _publish_args(self, identity: str, kind: EventType, task_id: str, revision: int, task_json: bytes) -> _Named:
        return {
            "revision": str(revision),
            "event": event_text(kind, task_id, revision, task_json),
            "history_size": self._history_size,
            "ttl": self._expiry,
            "channel": self._keys.channel(identity),
            **self._publishing,
        }


def _ms(record: TaskRecord) -> str:
    """When ``record`` may run, in ms since the epoch; '0': now."""
    return str(int(record.run_at.timestamp() * 1000)) if record.run_at is not None else "0"
