"""The PostgreSQL backend bundle: a queue and a registry on one connection pool and schema."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import psycopg
import psycopg_pool

from progressq._outage import backend_outage
from progressq.backends.postgres._common import _UNAVAILABLE, Names, Pool, redacted
from progressq.backends.postgres._listener import Listener
from progressq.backends.postgres._queue import PostgresTaskQueue
from progressq.backends.postgres._registry import PostgresClientRegistry
from progressq.backends.postgres._schema import checked_schema, migrate
from progressq.contracts import Backend, BackendDefaults, ClientRegistry, Lease, TaskQueue, TaskRecord
from progressq.errors import BackendUnavailable, ConfigurationError

logger = logging.getLogger("progressq.postgres")

_MIN_STALLED_TRANSACTION = 5.0  # seconds; see ``_stalled_transaction_ms``
_OPEN_ERRORS: tuple[type[BaseException], ...] = (*_UNAVAILABLE, psycopg.Error)


class PostgresBackend(BackendDefaults):
    """Queue and registry on one PostgreSQL database, for many web and worker processes.

    Open it for the application's lifetime (the Hub does): ``async with backend: ...``. Opening
    creates the schema's tables, or migrates them to this version's (see ``_schema``).

    Args:
        conninfo: a libpq connection string or URL (``postgresql://user:password@host:5432/db``).
        schema: the PostgreSQL schema holding this app's tables; apps sharing a database use
            different schemas (letters, digits and ``_``, 40 at most).
        capacity: most tasks waiting at once (``enqueue`` raises ``QueueFull`` beyond it);
            ``None`` for no limit.
        retention: seconds a finished task's record stays readable and listed.
        history_size: events kept per identity for resuming (at least this many, at most 100 more).
        history_ttl: seconds an identity's history and seq outlive its last event.
        lease_timeout: seconds without a heartbeat after which a running task is taken
            over by another worker. Heartbeats go every third of it.
        max_deliveries: deliveries of one task without an outcome (its workers died or
            stalled) before it is ``failed`` instead of run again.
        pool_size: most connections this process opens for queries (two more listen).
        attach_timeout: seconds ``attach`` waits for the listening connection.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "progressq",
        capacity: int | None = None,
        retention: float = 86_400.0,
        history_size: int = 1000,
        history_ttl: float = 86_400.0,
        lease_timeout: float = 30.0,
        max_deliveries: int = 5,
        pool_size: int = 10,
        attach_timeout: float = 10.0,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ConfigurationError("capacity must be >= 1 or None")
        if min(retention, history_ttl, lease_timeout, attach_timeout) <= 0:
            raise ConfigurationError("retention, history_ttl, lease_timeout and attach_timeout must be > 0")
        if history_size < 1 or max_deliveries < 1 or pool_size < 1:
            raise ConfigurationError("history_size, max_deliveries and pool_size must be >= 1")
        self._conninfo = conninfo
        self.schema = checked_schema(schema)
        names = Names(self.schema)
        self._pool_size = pool_size
        # A worker that stalls inside a transaction (a pause, a frozen VM) would hold its
        # row locks for as long as it stalls, and the takeover of its expired lease would wait
        # on them: the server ends such a session once it has idled in a transaction for as
        # long as a lease lasts (never less than a few seconds, which a busy event loop may
        # take between two statements), and its locks go with it.
        self._stalled_transaction_ms = int(max(lease_timeout, _MIN_STALLED_TRANSACTION) * 1000)
        self._pool = self._new_pool()
        self._registry = PostgresClientRegistry(
            self._pool, names, conninfo, history_size=history_size, history_ttl=history_ttl,
            attach_timeout=attach_timeout,
        )  # fmt: skip
        self._queue = PostgresTaskQueue(
            self._pool,
            names,
            self._registry,
            capacity=capacity,
            retention=retention,
            lease_timeout=lease_timeout,
            max_deliveries=max_deliveries,
        )
        self._control = Listener(conninfo, (names.wake, names.cancel), self._queue.notified, self._reconnected)
        self._group: anyio.abc.TaskGroup | None = None
        self._opened_before = False

    def _new_pool(self) -> Pool:
        return psycopg_pool.AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            timeout=10.0,  # a connection waited for longer: BackendUnavailable
            kwargs={"autocommit": True},  # transactions are begun where needed
            configure=self._configure,
            name=f"progressq-{self.schema}",
        )

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Settings of every pooled connection, made when it is opened (autocommit keeps them)."""
        await conn.execute(f"SET idle_in_transaction_session_timeout = {self._stalled_transaction_ms}")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBackend:
        """A backend for ``url`` (``postgresql://[user[:password]@]host[:port]/database``,
        ``postgres://`` too, with libpq's query parameters such as ``?sslmode=require``).

        ``options`` are the keyword arguments of :class:`PostgresBackend` (``schema``,
        ``capacity``, ``lease_timeout``, ...).
        """
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(f"not a PostgreSQL URL: {redacted(url)!r}")
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"not a PostgreSQL URL: {redacted(url)!r} ({exc})") from None
        return cls(url, **options)

    @property
    def url(self) -> str:
        """Where this backend's database is, without a password."""
        return redacted(self._conninfo) if "://" in self._conninfo else _without_password(self._conninfo)

    def describe(self) -> str:
        """``PostgresBackend``, the URL (or connection string) without its password, and the schema."""
        return f"{type(self).__name__} {self.url} schema {self.schema!r}"

    @property
    def queue(self) -> PostgresTaskQueue:
        return self._queue

    @property
    def registry(self) -> PostgresClientRegistry:
        return self._registry

    async def ping(self) -> bool:
        """True when PostgreSQL answers; False (never an exception) when it does not."""
        try:
            with anyio.fail_after(2.0):
                async with self._pool.connection() as conn:
                    await conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    async def __aenter__(self) -> PostgresBackend:
        try:
            import asyncio

            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "the PostgreSQL backend runs on asyncio only (psycopg's async API needs it)"
            ) from None
        if self._group is not None:
            raise ConfigurationError("this backend is already open")
        if self._pool.closed and self._opened_before:  # a pool cannot be opened twice
            self._pool = self._queue._pool = self._registry._pool = self._queue._batcher.pool = self._new_pool()
        self._opened_before = True
        try:
            await self._pool.open(wait=True, timeout=10.0)
            async with self._pool.connection() as conn:
                await migrate(conn, self.schema)
        except _OPEN_ERRORS as exc:
            await self._pool.close()
            raise BackendUnavailable(f"could not open PostgreSQL at {self.url}: {exc}") from exc
        except BaseException:  # a schema it cannot use, or cancelled
            with anyio.CancelScope(shield=True):
                await self._pool.close()
            raise
        group = anyio.create_task_group()
        await group.__aenter__()
        group.start_soon(self._control.run)
        group.start_soon(self._registry.listener.run)
        group.start_soon(self._queue.heartbeat)
        self._group = group
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and heartbeating; close the connections."""
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await self._queue.leave()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
            await self._queue._batcher.drain()  # the writes on their way commit (or fail) first
        backend_outage.reset()  # an outage of this backend ends with it, whatever its state
        with anyio.CancelScope(shield=True):
            await self._pool.close()

    async def enqueue_and_announce(self, record: TaskRecord, *, max_unfinished: int | None) -> int | None:
        """Store, queue and announce ``record`` in one transaction (see
        :meth:`PostgresTaskQueue.enqueue_and_announce`): atomic across processes."""
        return await self._queue.enqueue_and_announce(record, max_unfinished=max_unfinished)

    async def save_and_publish(
        self, lease: Lease, record: TaskRecord, view_json: bytes, *, finish: bool = False
    ) -> bool:
        """Save ``record``, fenced by the attempt, and publish it in one statement (see
        :meth:`PostgresTaskQueue.save_and_publish`)."""
        return await self._queue.save_and_publish(lease, record, view_json, finish=finish)

    async def _reconnected(self) -> None:
        """The control connection is back after it was lost: the pool's idle connections
        were likely cut too (a restart); the dead ones are replaced before they fail a write."""
        if self._control.connections > 1:
            try:
                with anyio.move_on_after(10.0):
                    await self._pool.check()
            except Exception as exc:  # the pool finds out by itself later
                logger.warning("could not check the pooled connections: %s", exc)
        await self._queue.reconnected()

    def __repr__(self) -> str:
        return f"PostgresBackend({self.url}, schema={self.schema!r})"


def _without_password(conninfo: str) -> str:
    """A ``key=value`` connection string without its password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<a connection string>"
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


if TYPE_CHECKING:  # mypy proves that the PostgreSQL backend satisfies the contracts
    _backend: Backend = cast(PostgresBackend, None)
    _queue: TaskQueue = cast(PostgresTaskQueue, None)
    _registry: ClientRegistry = cast(PostgresClientRegistry, None)
