"""Whose turn it is, across shards.

Each shard's ring hands out its owners' turns round-robin, and notes when each owner went to
its back (its stamp). Across shards the rule is the one ring's: the next turn goes to the due
owner (a task waiting, below its cap) that has waited longest since its last turn, the oldest
stamp; after its turn it waits at the back, behind every other due owner. So one round of
turns visits the due owners of every shard in the order of their stamps, then the next round
in the same order, each owner while it has turns left.

A shard's own ring order is its owners' stamp order, so the turns that this rule gives a
shard's owners are exactly those a ``take`` of that many tasks gives. Workers therefore ask
every shard for its due owners (``due``), count here how many of the next turns fall to each
shard, and take that many from each.

Stamps come from each master's clock: across machines, turns are as fair as the clocks agree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

__all__ = ("Due", "plan_turns")

Due = tuple[str, int, int]
"""A due owner of a shard: its id, its stamp (microseconds), the turns it may take."""


def plan_turns(due: Mapping[int, Sequence[Due]], limit: int) -> dict[int, int]:
    """How many of the next ``limit`` turns go to each shard, given each shard's due owners
    (in its ring's order)."""
    line = deque(
        (stamp, shard, position, turns)
        for shard, owners in due.items()
        for position, (_, stamp, turns) in enumerate(owners)
        if turns > 0
    )
    line = deque(sorted(line))  # oldest stamp first; a shard's own order breaks ties
    planned: dict[int, int] = {}
    taken = 0
    while line and taken < limit:
        stamp, shard, position, turns = line.popleft()
        planned[shard] = planned.get(shard, 0) + 1
        taken += 1
        if turns > 1:
            line.append((stamp, shard, position, turns - 1))  # to the back: its next round
    return planned
