"""Shards: slot groups of the keyspace, so that Redis Cluster can spread one backend.

Every key of a shard carries the shard's hash tag (``{prefix:N}``), so each script call,
which names the keys of one shard, touches one slot and stays atomic. An owner (an identity)
belongs to one shard, by a stable hash of its id: its tasks, its waiting list, its unique keys,
its event sequence and history live there, and so does each of its tasks' record. Each shard
has its own stream, ring of owners, counters, wake-up list and dead letters; workers take from
the shards in turn.

A task id minted by :meth:`_Shards.new_task_id` ends with its shard (``<random>.<N>``), so
that an operation given only the id (``get``, ``forget_dead``) goes to that shard at once; an
id from elsewhere is looked for in every shard.

One shard without a tag is a single Redis's keyspace as it always was (``prefix:...``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from progressq._defaults import random_task_id
from progressq.backends.redis._common import _Keys
from progressq.errors import ConfigurationError

__all__ = ("_Shards",)


class _Shards:
    """The shards of one backend: their keys, and which shard holds what."""

    def __init__(self, prefix: str, count: int, *, tagged: bool) -> None:
        if count < 1:
            raise ConfigurationError("shards must be >= 1")
        if count > 1 and not tagged:
            raise AssertionError("several shards need hash tags")
        self.count = count
        self.tagged = tagged
        self.keys: Sequence[_Keys] = [_Keys(prefix, n if tagged else None) for n in range(count)]

    def of_owner(self, owner: str) -> int:
        """The shard of an owner (an identity): a stable hash of its id."""
        if self.count == 1:
            return 0
        return zlib.crc32(owner.encode()) % self.count

    def new_task_id(self, owner: str) -> str:
        """A new task id; with several shards, it names its owner's shard."""
        token = random_task_id()
        return token if self.count == 1 else f"{token}.{self.of_owner(owner)}"

    def of_task(self, task_id: str) -> int | None:
        """The shard a task id names (see :meth:`new_task_id`), or None when it names none."""
        if self.count == 1:
            return 0
        _, dot, suffix = task_id.rpartition(".")
        if not dot or not suffix.isdigit() or len(suffix) > 6:
            return None
        shard = int(suffix)
        return shard if shard < self.count else None

    def search_order(self, task_id: str) -> list[int]:
        """The shards to look for a task in: the one its id names first, then the others."""
        named = self.of_task(task_id)
        rest = [n for n in range(self.count) if n != named]
        return rest if named is None else [named, *rest]
