"""The bot's key-value store on a SQLite file: plain sqlite3 on one thread, group commit.

The same tables and the same single-statement semantics as `SqlStore` (`add` is an upsert
that only overwrites an expired row, with RETURNING; `incr` one upsert), so every guarantee
that rests on SQLite's locking holds across processes unchanged. What differs is the cost:
each call is a short function queued for one thread of this store's own, which runs whatever
has queued up meanwhile inside one BEGIN IMMEDIATE ... COMMIT (reads alone need no
transaction). One thread hand-off and one commit serve a whole batch, and the statements are
plain SQL text that sqlite3 compiles once and caches, instead of SQLAlchemy building each one.

Durability. The wallet keeps `synchronous=FULL` for money. This store commits with FULL too,
except a batch that writes only keys whose loss after a power cut is harmless
(`RELAXED_PREFIXES`: dedupe marks, in-flight leases, conversation histories), which commits
with NORMAL: in WAL mode that is still atomic and isolated across processes (locking does not
depend on it) and survives a process crash; only an OS crash or power cut can lose the last
such commits. Because the WAL is one log, any relaxed commit is made durable by the next FULL
commit of any connection (the wallet's hold or capture right after it, say): a dedupe mark can
only be lost together with everything charged after it. A `?synchronous=` in the URL other than
FULL/EXTRA applies to everything, as for the wallet.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from billing.wallet.sql_engine import (
    BUSY_TIMEOUT_MS,
    _sqlite_options,
    create_engine,
    migrate,
    normalize_url,
)
from bot.store.base import Op

T = TypeVar("T")

MAX_BATCH = 256
PURGE_EVERY = 1000  # writes between two purges of expired rows
RELAXED_PREFIXES = ("seen:", "inflight:", "conv:")

_Op = Callable[[sqlite3.Cursor, int], Any]  # (cursor, now in ms) -> result

_GET = "SELECT value FROM bot_kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
_SET = (
    "INSERT INTO bot_kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_ADD = (
    "INSERT INTO bot_kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at "
    "WHERE bot_kv.expires_at IS NOT NULL AND bot_kv.expires_at <= ? RETURNING key"
)
_DELETE = "DELETE FROM bot_kv WHERE key = ? RETURNING expires_at"
_INCR = (
    "INSERT INTO bot_kv (key, value, expires_at) VALUES (?, '1', ?) ON CONFLICT (key) "
    "DO UPDATE SET "
    "value = CASE WHEN bot_kv.expires_at IS NULL OR bot_kv.expires_at > ? "
    "THEN CAST(CAST(bot_kv.value AS INTEGER) + 1 AS TEXT) ELSE '1' END, "
    "expires_at = CASE WHEN bot_kv.expires_at IS NULL OR bot_kv.expires_at > ? "
    "THEN bot_kv.expires_at ELSE excluded.expires_at END "
    "RETURNING value"
)
_SADD = "INSERT INTO bot_kv_sets (name, member) VALUES (?, ?) ON CONFLICT DO NOTHING"
_SREM = "DELETE FROM bot_kv_sets WHERE name = ? AND member = ?"
_SMEMBERS = "SELECT member FROM bot_kv_sets WHERE name = ?"
_PURGE = "DELETE FROM bot_kv WHERE expires_at <= ?"


def _expiry(now: int, ttl: float | None) -> int | None:
    return None if ttl is None else now + max(1, int(ttl * 1000))


def _relaxed(write: bool, key: str | None) -> bool:
    """True for a read, or a write of a key whose loss after a power cut is harmless."""
    return not write or (key is not None and key.startswith(RELAXED_PREFIXES))


def _transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class SqliteStore:
    """Store protocol on a SQLite file (see the module docstring)."""

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._durable = synchronous if synchronous in ("FULL", "EXTRA") else None
        self._sync = synchronous
        self._conn: sqlite3.Connection | None = None
        self._current_sync = ""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")
        # (op, writes?, relaxed?, future)
        self._pending: list[tuple[_Op, bool, bool, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writes = 0

    @classmethod
    async def open(cls, url: str) -> SqliteStore:
        """Migrate the database at `url` (Alembic, as for the wallet), then open it plainly."""
        u, sync, memory = _sqlite_options(normalize_url(url))
        if memory:
            raise ValueError("SqliteStore needs a file; use SqlStore for :memory:")
        engine = create_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
        store = cls(str(u.database), sync)
        await asyncio.get_running_loop().run_in_executor(store._thread, store._connect)
        return store

    def _connect(self) -> None:
        conn = sqlite3.connect(
            self._path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # we send BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,
            cached_statements=64,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        self._conn = conn
        self._set_sync(self._sync)

    def _set_sync(self, level: str) -> None:
        if level != self._current_sync:
            assert self._conn is not None
            self._conn.execute(f"PRAGMA synchronous = {level}")
            self._current_sync = level

    # --- the queue ---------------------------------------------------------------------------

    async def _call(self, op: _Op, *, write: bool, relaxed: bool) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, write, relaxed, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            writes = sum(1 for _, write, _, _ in batch if write)
            purge = False
            if writes:
                before = self._writes
                self._writes += writes
                purge = before // PURGE_EVERY != self._writes // PURGE_EVERY
            relaxed = all(relaxed or not write for _, write, relaxed, _ in batch)
            ops = [op for op, _, _, _ in batch]
            try:
                outcomes = await loop.run_in_executor(
                    self._thread, self._run_batch, ops, bool(writes), relaxed, purge
                )
            except Exception as exc:  # the whole transaction failed (e.g. the disk)
                outcomes = [(False, exc)] * len(batch)
            for (_, _, _, fut), (ok, value) in zip(batch, outcomes, strict=True):
                if fut.done():  # the caller gave up waiting; its write stands or not as above
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_batch(
        self, ops: list[_Op], write: bool, relaxed: bool, purge: bool
    ) -> list[tuple[bool, Any]]:
        delay = 0.002
        for attempt in range(50):
            try:
                return self._once(ops, write, relaxed, purge)
            except sqlite3.OperationalError as exc:
                if attempt == 49 or not _transient(exc):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        raise AssertionError("unreachable")

    def _once(
        self, ops: list[_Op], write: bool, relaxed: bool, purge: bool
    ) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        now = time.time_ns() // 1_000_000
        if self._durable is not None:
            self._set_sync("NORMAL" if relaxed else self._durable)
        cur = conn.cursor()
        outcomes: list[tuple[bool, Any]] = []
        if write:
            cur.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                try:
                    outcomes.append((True, op(cur, now)))
                except sqlite3.OperationalError as exc:
                    if _transient(exc):
                        raise  # retry the whole batch
                    outcomes.append((False, exc))
                except Exception as exc:
                    outcomes.append((False, exc))
                # A failed statement is undone alone; if SQLite gave up the whole transaction,
                # the earlier results are void: fail the batch rather than report them.
                if write and not conn.in_transaction:
                    raise sqlite3.OperationalError("transaction rolled back by SQLite")
            if purge:
                cur.execute(_PURGE, (now,))
            if write:
                cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        finally:
            cur.close()
        return outcomes

    # --- the Store protocol ------------------------------------------------------------------

    def _op(self, name: str, *args: Any) -> tuple[_Op, bool, str | None]:
        """(the blocking function, writes?, the key written) for one Store call."""
        return getattr(self, "_op_" + name)(*args)

    async def _one(self, name: str, *args: Any) -> Any:
        fn, write, key = self._op(name, *args)
        return await self._call(fn, write=write, relaxed=_relaxed(write, key))

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        """Every op in one hand-off to the store's thread (one transaction if any writes)."""
        built = [self._op(op[0], *op[1:]) for op in ops]
        if not built:
            return []

        def fn(cur: sqlite3.Cursor, now: int) -> list[tuple[bool, Any]]:
            out: list[tuple[bool, Any]] = []
            for one, _, _ in built:
                try:
                    out.append((True, one(cur, now)))
                except sqlite3.OperationalError as exc:
                    if _transient(exc):
                        raise
                    out.append((False, exc))
            return out

        write = any(w for _, w, _ in built)
        relaxed = all(_relaxed(w, key) for _, w, key in built)
        results = await self._call(fn, write=write, relaxed=relaxed)
        for ok, value in results:
            if not ok:
                raise value
        return [value for _, value in results]

    @staticmethod
    def _op_get(key: str) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> str | None:
            row = cur.execute(_GET, (key, now)).fetchone()
            return row[0] if row else None

        return op, False, None

    @staticmethod
    def _op_get_many(keys: Sequence[str]) -> tuple[_Op, bool, str | None]:
        keys = list(keys)

        def op(cur: sqlite3.Cursor, now: int) -> list[str | None]:
            out: list[str | None] = []
            for key in keys:
                row = cur.execute(_GET, (key, now)).fetchone()
                out.append(row[0] if row else None)
            return out

        return op, False, None

    @staticmethod
    def _op_set(key: str, value: str, ttl: float | None = None) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> None:
            cur.execute(_SET, (key, value, _expiry(now, ttl)))

        return op, True, key

    @staticmethod
    def _op_add(key: str, value: str, ttl: float | None = None) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> bool:
            return cur.execute(_ADD, (key, value, _expiry(now, ttl), now)).fetchone() is not None

        return op, True, key

    @staticmethod
    def _op_delete(key: str) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> bool:
            row = cur.execute(_DELETE, (key,)).fetchone()
            return row is not None and (row[0] is None or row[0] > now)

        return op, True, key

    @staticmethod
    def _op_incr(key: str, ttl: float | None = None) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> int:
            return int(cur.execute(_INCR, (key, _expiry(now, ttl), now, now)).fetchone()[0])

        return op, True, key

    @staticmethod
    def _op_sadd(name: str, member: str) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> None:
            cur.execute(_SADD, (name, member))

        return op, True, None

    @staticmethod
    def _op_srem(name: str, member: str) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> None:
            cur.execute(_SREM, (name, member))

        return op, True, None

    @staticmethod
    def _op_smembers(name: str) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> set[str]:
            return {row[0] for row in cur.execute(_SMEMBERS, (name,)).fetchall()}

        return op, False, None

    async def get(self, key: str) -> str | None:
        return await self._one("get", key)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return await self._one("get_many", keys) if keys else []

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        await self._one("set", key, value, ttl)

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        return await self._one("add", key, value, ttl)

    async def delete(self, key: str) -> bool:
        return await self._one("delete", key)

    async def incr(self, key: str, ttl: float | None = None) -> int:
        return await self._one("incr", key, ttl)

    async def sadd(self, name: str, member: str) -> None:
        await self._one("sadd", name, member)

    async def srem(self, name: str, member: str) -> None:
        await self._one("srem", name, member)

    async def smembers(self, name: str) -> set[str]:
        return await self._one("smembers", name)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._thread, self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=False)
