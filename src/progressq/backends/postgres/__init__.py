"""The PostgreSQL backend: any number of web and worker processes on one PostgreSQL database.

``PostgresBackend.from_url("postgresql://user@localhost:5432/app")`` is a queue and a
registry sharing one connection pool and one PostgreSQL schema (``progressq`` unless
``schema=`` says otherwise). Needs the ``postgres`` extra (psycopg 3 and psycopg_pool) and
PostgreSQL 13 or later (its tests run on 15). psycopg's async API runs on asyncio only, so
this backend does too.
Opening it creates its tables, or migrates them (a ``schema_version`` table records each
migration applied).

**Queue.** Tasks are rows. A worker process takes the next tasks (up to its free slots) in one
transaction, each the first owner's in turn order with a task due and below the cap of running
tasks (its row locked ``FOR UPDATE SKIP LOCKED``, so that one owner's leases go one at a time
while other owners' go on beside), then that owner's first task (``FOR UPDATE SKIP LOCKED``),
whose ``attempt`` is bumped. A task's unique key names at most one unfinished task per owner. A
lease lasts ``lease_timeout`` seconds and the backend extends every lease it holds every
third of that (one statement for all); a task whose lease ran out (its worker died or
stalled) is taken over by the next worker that looks for work. Every write (``save``,
``release``, ``extend``) carries the attempt and is refused once another one took over. A task
delivered more than ``max_deliveries`` times without an outcome is ``failed`` with an error
saying so, and its owner is told. Finished tasks are deleted ``retention`` seconds after they
ended. Waiting workers are woken by ``NOTIFY`` (a task was queued, or an owner dropped below
the cap) and look again at least every second (tasks to run later, leases to take over).

**Registry.** Each identity has a row with its last ``seq``; publishing an event bumps it and
inserts the event into the history table in one transaction, so seqs are gapless and
history is in seq order, and ``NOTIFY`` sends the event at commit (a reference to its row
when it is larger than a notification may be). A process that has clients attached LISTENs
on one connection of its own and hands each of its identities' events to their sinks; after
that connection is lost it reconnects and fills any gap from the history. History keeps
``history_size`` events per identity and is forgotten ``history_ttl`` seconds after the
identity's last event.

An event about a task whose stored state has moved on (a newer revision exists, or this
revision was already published) is dropped: nothing a fenced-out worker had in flight reaches
a client, and no state is published twice.

Database errors surface as :class:`~progressq.errors.BackendUnavailable`; ``lease`` instead
waits for the database to come back, so workers ride out an outage.
"""

try:
    import psycopg  # noqa: F401 - checked here so that a missing extra is named
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('progressq.backends.postgres needs psycopg 3: pip install "progressq[postgres]"') from exc

from progressq.backends.postgres._backend import PostgresBackend
from progressq.backends.postgres._queue import PostgresTaskQueue
from progressq.backends.postgres._registry import PostgresClientRegistry

__all__ = ("PostgresBackend", "PostgresClientRegistry", "PostgresTaskQueue")
