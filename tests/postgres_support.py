"""Helpers for tests against a real PostgreSQL: availability, a database of this test session,
a schema per test, cleanup.

The session's database gets a unique name on first use and is dropped when the session ends
(``drop_session_database``, called by conftest). Each test works in a schema of its own.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

SERVER_URL = os.environ.get("PROGRESSQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

_database: str | None = None


def _psycopg() -> object:
    return pytest.importorskip("psycopg", reason='needs pip install "progressq[postgres]"')


def postgres_answers() -> bool:
    import psycopg

    try:
        with psycopg.connect(SERVER_URL, connect_timeout=10, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def require_postgres() -> None:
    _psycopg()
    if not postgres_answers():
        pytest.skip(f"no PostgreSQL answers at {SERVER_URL} (start one, or set PROGRESSQ_TEST_POSTGRES)")


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def database_url() -> str:
    """The URL of this session's database, created on first use (skips without a server;
    once it exists, a server that stops answering fails the tests rather than skipping them)."""
    global _database
    if _database is None:
        require_postgres()
        import psycopg

        name = f"progressq_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        _database = name
    return _with_database(SERVER_URL, _database)


def drop_session_database() -> None:
    """Drop this session's database, if one was made (its connections are ended first)."""
    global _database
    if _database is None:
        return
    import psycopg

    name, _database = _database, None
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_schema(name: str = "t") -> str:
    return f"pqtest_{name}_{uuid.uuid4().hex[:10]}"[:40]


def drop_schema(schema: str) -> None:
    """Drop ``schema`` and everything in it (and nothing else)."""
    import psycopg

    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def schema_of_its_own(name: str = "t") -> Iterator[str]:
    database_url()
    schema = new_schema(name)
    try:
        yield schema
    finally:
        drop_schema(schema)
