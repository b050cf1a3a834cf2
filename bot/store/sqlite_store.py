"""The bot's key-value store on a SQLite file: plain sqlite3 on one thread, group commit.

The same tables and the same single-statement semantics as `SqlStore` (`add` is an upsert
that only overwrites an expired row, with RETURNING; `incr` one upsert), so every guarantee
that rests on SQLite's locking holds across processes unchanged. What differs is the cost:
each call is a short function queued for the group-commit writer
(`billing.storage.sqlite_writer.SqliteWriter.shared`: one thread and connection per file and
process, shared with the wallet when both live in the same file, as by default), which
runs whatever has queued up meanwhile inside one BEGIN IMMEDIATE ... COMMIT (reads alone need no
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

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from billing.storage.sql_engine import create_engine, migrate, normalize_url, sqlite_options
from billing.storage.sqlite_writer import SqliteWriter, is_transient
from bot.store.base import Op, OpStore
from bot.store.keys import RELAXED_PREFIXES

PURGE_EVERY = 1000  # writes between two purges of expired rows

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
_DELETE_IF = "DELETE FROM bot_kv WHERE key = ? AND value = ? RETURNING expires_at"
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


class SqliteStore(OpStore):
    """Store protocol on a SQLite file (see the module docstring)."""

    def __init__(self, path: str, synchronous: str) -> None:
        # The process's one group-commit writer for this file, shared with the wallet when
        # both live in it (the default): one write lock holder, one disk flush for both.
        self._writer = SqliteWriter.shared(path, synchronous, name="sqlite-writer")
        self._writes = 0

    @classmethod
    async def open(cls, url: str) -> SqliteStore:
        """Migrate the database at `url` (Alembic, as for the wallet), then open it plainly."""
        u, sync, memory = sqlite_options(normalize_url(url))
        if memory:
            raise ValueError("SqliteStore needs a file; use SqlStore for :memory:")
        engine = create_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
        store = cls(str(u.database), sync)
        await store._writer.open()
        return store

    async def _call(self, op: _Op, *, write: bool, relaxed: bool) -> Any:
        """Queue `op` on the writer; every PURGE_EVERY writes one also drops expired rows."""
        purge = False
        if write:
            self._writes += 1
            purge = self._writes % PURGE_EVERY == 0

        def fn(cur: sqlite3.Cursor) -> Any:
            now = time.time_ns() // 1_000_000
            result = op(cur, now)
            if purge:
                cur.execute(_PURGE, (now,))
            return result

        return await self._writer.run(fn, write=write, relaxed=relaxed)

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
                    if is_transient(exc):
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
    def _op_delete_if(key: str, value: str) -> tuple[_Op, bool, str | None]:
        def op(cur: sqlite3.Cursor, now: int) -> bool:
            row = cur.execute(_DELETE_IF, (key, value)).fetchone()
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

    async def close(self) -> None:
        await self._writer.close()
