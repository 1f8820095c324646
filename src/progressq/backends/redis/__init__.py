"""The Redis backend: any number of web and worker processes on one Redis, or on Redis Cluster.

``RedisBackend.from_url("redis://localhost:6379/0")`` is a queue and a registry sharing one
client and one key prefix. Needs the ``redis`` extra (redis-py 5.0.1 or later) and Redis 6.2 or
later. redis-py's asyncio client runs on asyncio only, so this backend does too (the memory
backend also runs on trio).

**Redis Cluster.** ``RedisBackend.from_url("redis+cluster://host:port,host:port")`` (Redis
7.0 or later) spreads the keys over ``shards`` slot groups, each under its hash tag, so that
every script still touches one slot; an owner's tasks and events live in one shard, workers
take from every shard in turn, and events use sharded pub/sub (see ``_shards``, ``_turns``
and ``_cluster``).

**Queue.** Tasks go through a Redis Stream read by one consumer group. A lease is the
stream entry pending with the worker's consumer; the backend keeps it alive with heartbeats
(every ``lease_timeout / 3`` seconds) for as long as the worker holds it. An entry idle for
``lease_timeout`` (its worker died or stalled) is reclaimed with ``XAUTOCLAIM`` by the next
worker that looks for work. Taking an entry bumps the task's ``attempt`` atomically, and
every write (``save``, ``release``, ``finish``, ``extend``) carries the attempt and is refused
once another one took over: a worker that lost its lease can no longer change its task. A
task delivered more than ``max_deliveries`` times without an outcome is ``failed`` with an
error saying so, and its owner is told. Records of finished tasks expire after
``retention`` seconds.

**Registry.** Each identity has a sequence counter and a history list (at least
``history_size`` events, a tenth more at most, forgotten ``history_ttl`` seconds after the
identity's last event, at most a minute later); one Lua script
numbers an event, stores it and publishes it on the identity's channel, so publish order is
seq order. Each process subscribes only to the channels of identities attached in it,
over one shared pub/sub connection. After that connection is lost it reconnects,
resubscribes and fills any gap from the history, so every sink sees seq without gaps.

An event about a task whose stored state has moved on (a newer revision exists, or this
revision was already published) is dropped by the publish script: nothing a fenced-out
worker had in flight reaches a client, and no state is published twice.

Redis errors surface as :class:`~progressq.errors.BackendUnavailable`; ``lease`` instead
waits for Redis to come back, so workers ride out an outage.
"""

try:
    import redis  # noqa: F401 - checked here so that a missing extra is named
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.backends.redis needs redis-py: pip install "progressq[redis]"') from exc

from progressq.backends.redis._backend import RedisBackend
from progressq.backends.redis._queue import RedisTaskQueue
from progressq.backends.redis._registry import RedisClientRegistry

__all__ = ("RedisBackend", "RedisClientRegistry", "RedisTaskQueue")
