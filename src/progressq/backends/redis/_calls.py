"""Every call of the backend's Redis script, built by name in one place.

The script (``scripts/operations.lua``) holds every operation; a call names the operation, its
keys and its arguments, and the script binds the names (see its header). This module is the
only place that knows what each operation takes: the queue, the registry and the backend ask
it for a call and run it. A combined operation (``submit``, ``commit``) takes the union of the
named arguments of the operations it combines; a name they share means one value.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

from redis.commands.core import AsyncScript

from progressq.backends.redis._common import _GROUP, _Keys, _record_encoder
from progressq.contracts import Lease, TaskRecord
from progressq.messages import EventType

__all__ = ("_Call", "_Calls", "queue_script")

_Value = str | bytes
_Named = Mapping[str, _Value]


class _Call:
    """One call of the script: ``keys`` and ``args`` as Redis takes them (``KEYS``, ``ARGV``)."""

    __slots__ = ("args", "keys", "script")

    def __init__(self, script: AsyncScript, op: str, keys: _Named, args: _Named) -> None:
        self.script = script
        self.keys = list(keys.values())
        self.args: list[_Value] = [op, *keys]
        for pair in args.items():
            self.args += pair

    async def run(self) -> Any:
        """Run the call now (the script loaded first where Redis lost it)."""
        return await self.script(keys=self.keys, args=self.args)

    def queue_on(self, pipe: Any) -> None:
        """Queue the call on a pipeline (of a single Redis or of Redis Cluster); an answer
        ``NoScriptError`` means Redis lost the script: ``run`` the call again."""
        queue_script(pipe, self.script, self.keys, self.args)


def queue_script(pipe: Any, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """``EVALSHA`` of ``script`` on a pipeline. As a command, not as the pipeline's ``evalsha``:
    redis-py 5.0 refuses that method on a cluster pipeline (a node may lack the script);
    the callers run a call again where Redis answers ``NoScriptError``, loading the script."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def _union(*parts: _Named) -> dict[str, Any]:
    """The named arguments of the operations a call combines: a name they share is one value."""
    union: dict[str, Any] = {}
    for part in parts:
        for name, value in part.items():
            if union.setdefault(name, value) != value:
                raise AssertionError(f"the parts of a combined call disagree on {name!r}")
    return union


@functools.cache
def _script_text() -> str:
    return files("progressq.backends.redis").joinpath("scripts", "operations.lua").read_text(encoding="utf-8")


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
        self.script = client.register_script(_script_text())
        self._keys = keys
        # with several shards, the ring's stamps (see the script's `due`); absent, none are kept
        self._stamps: _Named = {"stamps": keys.stamps} if stamps else {}
        # absent, the script publishes with PUBLISH: a single Redis's calls stay as they were
        self._publishing: _Named = {"publish_command": "SPUBLISH"} if sharded_pubsub else {}
        self._capacity = str(capacity)
        self._retention = str(retention)
        self._history_size = str(history_size)
        self._history_ttl = str(history_ttl)

    def _call(self, op: str, keys: _Named, args: _Named) -> _Call:
        return _Call(self.script, op, keys, args)

    # --- the queue's --------------------------------------------------------------------

    def enqueue(self, record: TaskRecord) -> _Call:
        return self._call("enqueue", self._enqueue_keys(record), self._enqueue_args(record))

    def submit(self, record: TaskRecord, max_unfinished: int | None) -> _Call:
        """``enqueue`` and the ``taskQueued`` publish in one step, under the owner's limit."""
        keys = _union(self._enqueue_keys(record), self._publish_keys(record.owner, record.id))
        announce = self._publish_args(record.owner, "taskQueued", record.id, record.revision, record.view_json())
        args = _union(self._enqueue_args(record), announce, {"limit": str(max_unfinished or 0)})
        return self._call("submit", keys, args)

    def save(self, lease: Lease, record: TaskRecord) -> _Call:
        return self._call("save", self._save_keys(record), self._save_args(lease, record))

    def commit(self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool) -> _Call:
        """``save``, the ``taskProgress`` publish and (with ``finish``) the acknowledgement."""
        keys = _union(
            self._save_keys(record), self._publish_keys(record.owner, record.id), {"stream": self._keys.stream}
        )
        args = _union(
            self._save_args(lease, record),
            self._publish_args(record.owner, "taskProgress", record.id, record.revision, view_json),
            {"finish": "1" if finish else "0", "group": _GROUP, "entry": lease.token},
        )
        return self._call("commit", keys, args)

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

    # --- the parts ----------------------------------------------------------------------

    def _enqueue_keys(self, record: TaskRecord) -> _Named:
        return {
            "task": self._keys.task(record.id),
            "owner_tasks": self._keys.owner(record.owner),
            "counters": self._keys.counters,
            "waiting": self._keys.waiting(record.owner),
            "unfinished": self._keys.unfinished,
            "ring": self._keys.ring,
            "wake": self._keys.wake,
            "delayed": self._keys.delayed,
            "unique": self._keys.unique(record.owner),
            **self._stamps,
        }

    def _enqueue_args(self, record: TaskRecord) -> _Named:
        return {
            "task_id": record.id,
            "record": _record_encoder.encode(record),
            "owner": record.owner,
            "created": str(int(record.created_at.timestamp() * 1000)),
            "revision": str(record.revision),
            "capacity": self._capacity,
            "retention": self._retention,
            "run_at": _ms(record),
            "unique_key": record.key or "",
            "task_prefix": self._keys.task(""),
        }

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
            "kind": kind,
            "task_id": task_id,
            "revision": str(revision),
            "view": task_json,
            "history_size": self._history_size,
            "ttl": self._history_ttl,
            "channel": self._keys.channel(identity),
            **self._publishing,
        }


def _ms(record: TaskRecord) -> str:
    """When ``record`` may run, in ms since the epoch; '0': now."""
    return str(int(record.run_at.timestamp() * 1000)) if record.run_at is not None else "0"
