"""The PostgreSQL schema of one progressq app: its tables, made and migrated by the backend.

Every table lives in one PostgreSQL schema (``progressq`` unless told otherwise), so apps
sharing a database use different schemas. ``schema_version`` records each migration applied;
opening a backend applies the missing ones in order, under an advisory lock so that processes
starting together migrate once. A schema newer than this version of progressq knows is
refused rather than guessed at.

Version 1:

- ``tasks``: one row per task. ``record`` is the task record (msgspec JSON); ``attempt``,
  ``revision`` and ``cancel_requested`` are the columns' (they win over the record's).
  ``state`` is ``queued`` (waiting, from ``run_at`` on), ``leased`` (a worker has it until
  ``lease_until`` unless heartbeats extend it) or ``done``; ``position`` orders an owner's
  line; ``published`` is the last revision told to its owner; ``expires_at`` is set when it
  finishes (retention); ``failed_at`` while it is on the dead-letter list; ``key`` its unique
  key, if any (one unfinished task per owner and key).
- ``owners``: owners in turn order (``turn``), for fair dispatch.
- ``identities`` (``seq`` per identity) and ``events`` (its history, ``(identity, seq)``).
- ``slots``: periodic slots claimed, until when.
- ``workers``: the processes whose workers take tasks, when each was last seen.
"""

from __future__ import annotations

import re
import zlib

import psycopg

from progressq.errors import ConfigurationError

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # version 1
        "CREATE SEQUENCE {s}.positions",
        "CREATE SEQUENCE {s}.turns",
        """CREATE TABLE {s}.tasks (
            id text PRIMARY KEY,
            owner text NOT NULL,
            record bytea NOT NULL,
            state text NOT NULL CHECK (state IN ('queued', 'leased', 'done')),
            status text NOT NULL,
            attempt integer NOT NULL DEFAULT 0,
            revision integer NOT NULL,
            published integer NOT NULL DEFAULT 0,
            cancel_requested boolean NOT NULL DEFAULT false,
            deliveries integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL,
            position bigint NOT NULL,
            run_at timestamptz NOT NULL DEFAULT '-infinity',
            lease_until timestamptz,
            expires_at timestamptz,
            failed_at timestamptz,
            key text
        )""",
        "CREATE INDEX tasks_waiting ON {s}.tasks (owner, position) WHERE state = 'queued'",
        "CREATE INDEX tasks_scheduled ON {s}.tasks (run_at) WHERE state = 'queued'",
        "CREATE INDEX tasks_leased ON {s}.tasks (lease_until) WHERE state = 'leased'",
        "CREATE INDEX tasks_running ON {s}.tasks (owner) WHERE state = 'leased'",
        "CREATE INDEX tasks_unfinished ON {s}.tasks (owner, state) WHERE state <> 'done'",
        "CREATE INDEX tasks_by_owner ON {s}.tasks (owner, created_at DESC, id DESC)",
        "CREATE INDEX tasks_expiring ON {s}.tasks (expires_at) WHERE expires_at IS NOT NULL",
        "CREATE INDEX tasks_dead ON {s}.tasks (failed_at DESC) WHERE failed_at IS NOT NULL",
        "CREATE UNIQUE INDEX tasks_key ON {s}.tasks (owner, key) WHERE key IS NOT NULL AND state <> 'done'",
        "CREATE TABLE {s}.owners (owner text PRIMARY KEY, turn bigint NOT NULL)",
        "CREATE INDEX owners_turn ON {s}.owners (turn)",
        """CREATE TABLE {s}.identities (
            identity text PRIMARY KEY,
            seq bigint NOT NULL,
            last_event_at timestamptz NOT NULL
        )""",
        "CREATE INDEX identities_idle ON {s}.identities (last_event_at)",
        """CREATE TABLE {s}.events (
            identity text NOT NULL,
            seq bigint NOT NULL,
            kind text NOT NULL,
            task_id text NOT NULL,
            revision integer NOT NULL,
            task_json bytea NOT NULL,
            PRIMARY KEY (identity, seq)
        )""",
        "CREATE TABLE {s}.slots (key text PRIMARY KEY, until timestamptz NOT NULL)",
        "CREATE TABLE {s}.workers (id text PRIMARY KEY, seen_at timestamptz NOT NULL)",
    ),
)
"""Each version's statements, in order; ``{s}`` is the quoted schema name. Append, never edit."""

VERSION = len(MIGRATIONS)


def checked_schema(name: str) -> str:
    """``name`` if it can name the schema: lower-case letters, digits and ``_``, 40 at most
    (channel names derive from it and PostgreSQL cuts identifiers at 63 bytes)."""
    if not _NAME.match(name):
        raise ConfigurationError(
            f"the schema must be 1-40 lower-case letters, digits or '_', starting with a letter, not {name!r}"
        )
    return name


async def migrate(conn: psycopg.AsyncConnection[object], schema: str) -> int:
    """Bring ``schema`` to :data:`VERSION`; the version it was at (0: new)."""
    quoted = f'"{schema}"'
    async with conn.transaction():
        # One process migrates at a time; the others then find it done.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(f"progressq:{schema}".encode()),))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {quoted}.schema_version")
        row = await cursor.fetchone()
        found = int(row[0]) if row is not None else 0  # type: ignore[index]
        if found > VERSION:
            raise ConfigurationError(
                f"the PostgreSQL schema {schema!r} is at version {found}, newer than this progressq knows "
                f"({VERSION}): upgrade progressq"
            )
        for version in range(found + 1, VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                await conn.execute(statement.format(s=quoted))
            await conn.execute(f"INSERT INTO {quoted}.schema_version (version) VALUES (%s)", (version,))
    return found
