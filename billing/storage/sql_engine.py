"""Opening a SQL database the way every creditbot SQL store needs it, and migrating it.

One place knows the URL forms, SQLite's settings and how migrations run, so the wallet and the
bot's key-value store (same database) behave alike. Nothing here knows what the tables hold.

SQLite settings, per connection: WAL journal (readers never block the writer), synchronous=FULL
(a committed charge or top-up survives a power cut; override with `?synchronous=NORMAL` in the
URL), busy_timeout 30 s (another process's write waits instead of failing), and writes open with
BEGIN IMMEDIATE so two writers never deadlock upgrading read locks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, pool
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from billing import forking

T = TypeVar("T")

# Pages of 1 KiB for a new database file (SQLite's default is 4 KiB). A wallet commit changes a
# few rows in several tables and indexes, and WAL mode writes every page it touched whole, then
# flushes: with 1 KiB pages a hold or capture writes a quarter of the bytes, and its FULL commit
# takes ~20% less time here (docs/performance.md). Large values (conversation histories) span
# more pages but about the same bytes.
PAGE_SIZE = 1024
BUSY_TIMEOUT_MS = 30_000
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
WRITE_OPTION = "creditbot_write"  # execution option: this transaction will write
MIGRATION_LOCK_ID = 0x63726564  # pg_advisory_xact_lock key ("cred")


def normalize_url(url: str | URL) -> URL:
    """Accept sqlite://, sqlite+aiosqlite://, postgres://, postgresql:// and pick async drivers."""
    u = make_url(url) if isinstance(url, str) else url
    backend = u.get_backend_name()
    if backend == "sqlite":
        return u.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported SQL URL scheme: {u.drivername!r}")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str | URL) -> AsyncEngine:
    """An async engine with creditbot's settings (see the module docstring).

    PostgreSQL keeps a small pool per process (`?pool_size=N`, default 8, plus 4 overflow):
    callers beyond it queue for a connection instead of exhausting the server's
    max_connections when several bot processes share one database.
    """
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        engine = _sqlite_engine(u)
    else:
        query = dict(u.query)
        size = int(str(query.pop("pool_size", "8")))
        engine = create_async_engine(
            u.set(query=query), pool_size=size, max_overflow=max(1, size // 2), pool_timeout=60
        )
    if not isinstance(engine.sync_engine.pool, pool.StaticPool):  # :memory: is one process's
        forking.reset_in_child(engine, _fresh_pool)
    return engine


def _fresh_pool(engine: AsyncEngine) -> None:
    """In a forked child: a pool of its own; the parent's connections (their sockets, their
    driver threads, which the child does not have) are kept aside, never used or closed."""
    forking.keep(engine.sync_engine.pool)
    engine.sync_engine.dispose(close=False)


def sqlite_options(u: URL) -> tuple[URL, str, bool]:
    """(URL without our options, synchronous level, in memory?) of a normalized SQLite URL.

    Splits our own URL options off (`?synchronous=`) and creates the database's directory, so
    every opener of the file (engine, writer thread, the bot's store) reads the URL alike.
    """
    query = dict(u.query)
    sync = str(query.pop("synchronous", "FULL")).upper()
    if sync not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
    u = u.set(query=query)
    memory = u.database in (None, "", ":memory:")
    if not memory:
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return u, sync, memory


def _sqlite_events(engine: Engine, sync: str, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is ours to send.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not memory:
            # Only a new, empty file takes it (before WAL mode is set); an existing one keeps its.
            cur.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {sync}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _sqlite_engine(u: URL) -> AsyncEngine:
    u, sync, memory = sqlite_options(u)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_MS / 1000}}
    if memory:
        kwargs["poolclass"] = pool.StaticPool
    else:
        kwargs.update(pool_size=5, max_overflow=5)
    engine = create_async_engine(u, **kwargs)
    _sqlite_events(engine.sync_engine, sync, memory)
    return engine


def sqlite_file(url: str | URL) -> tuple[str, str] | None:
    """(path, synchronous) of a SQLite file for a writer thread (`SqliteWriter`); None for :memory:.

    Each aiosqlite statement is several hand-offs to its thread; running a whole write
    transaction on one thread of our own, in plain sqlite3, costs one hand-off and no
    SQLAlchemy statement building.
    """
    u, sync, memory = sqlite_options(normalize_url(url))
    if memory:
        return None
    return str(Path(str(u.database)).expanduser()), sync


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool), but its transactions announce they will write."""
    return engine.execution_options(**{WRITE_OPTION: True})


def is_transient(exc: BaseException) -> bool:
    """A lock or serialization failure that a retry of the whole transaction will get past."""
    if isinstance(exc, OperationalError):
        text = str(exc.orig).lower()
        if "locked" in text or "busy" in text:
            return True
    if isinstance(exc, DBAPIError):
        orig: Any = exc.orig
        state = getattr(orig, "sqlstate", None) or getattr(
            getattr(orig, "__cause__", None), "sqlstate", None
        )
        return state in ("40001", "40P01")  # serialization failure, deadlock
    return False


async def retrying(op: Callable[[], Awaitable[T]], *, attempts: int = 50) -> T:
    """Run `op`, retrying transient lock failures with jittered exponential backoff."""
    delay = 0.002
    for attempt in range(attempts):
        try:
            return await op()
        except DBAPIError as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.25)
    raise AssertionError("unreachable")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to head; safe when several processes open a fresh database at once.

    PostgreSQL: a transaction-scoped advisory lock serializes the migrators. SQLite: the
    migration runs inside BEGIN IMMEDIATE, so only one process writes the schema while the
    others wait (busy_timeout) and then find it already at head.
    """
    from billing.storage.migrations import upgrade

    def run(sync_conn: Connection) -> None:
        if sync_conn.dialect.name == "postgresql":
            sync_conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        upgrade(sync_conn)

    async def once() -> None:
        async with writer(engine).begin() as conn:
            await conn.run_sync(run)

    await retrying(once)
