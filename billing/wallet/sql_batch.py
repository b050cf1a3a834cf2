"""SQLite's writer: one thread, and every write waiting at that moment committed together.

SQLite admits one writer at a time and a commit costs an fsync (synchronous=FULL). So the
wallet hands each write transaction, as a plain blocking function of a sqlite3 cursor, to one
thread of its own with its own sqlite3 connection, which runs whatever has queued up inside a
single BEGIN IMMEDIATE ... COMMIT, each function in its own SAVEPOINT: a refused or failed
operation rolls back alone, the rest commit, and one fsync serves them all (group commit).
Nobody is told a result before its commit is done. A lone write runs without a savepoint, so at
low load it is a plain transaction. The functions run fixed SQL text (sql_lite), which sqlite3
compiles once and caches: no SQLAlchemy on this thread.

The bot's SQLite store uses the same writer for its own file (one mechanism, one set of retry
and rollback rules). For it, a call may be a read (`write=False`: a batch of reads only runs
without a transaction) or a `relaxed` write whose loss after a power cut is harmless: a batch
made only of those commits with synchronous=NORMAL even when the writer's level is FULL/EXTRA.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from billing.wallet.sql_engine import BUSY_TIMEOUT_MS

T = TypeVar("T")

MAX_BATCH = 256
ATTEMPTS = 50

_Fn = Callable[[sqlite3.Cursor], Any]
_Outcome = tuple[bool, Any]  # (True, result) or (False, exception)
_DURABLE = ("FULL", "EXTRA")


def is_transient(exc: BaseException) -> bool:
    """Another process holds the write lock past busy_timeout; the whole batch is retried."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class SqliteWriter:
    """Runs write transactions for one process on one thread, batching concurrent ones."""

    def __init__(self, path: str, synchronous: str, *, name: str = "wallet-writer") -> None:
        self._path = path
        self._sync = synchronous
        self._current_sync = ""
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        # (fn, writes?, relaxed?, future)
        self._pending: list[tuple[_Fn, bool, bool, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _connection(self) -> sqlite3.Connection:
        """The writer's connection, opened on first use (on the writer thread)."""
        if self._conn is None:
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
        return self._conn

    def _set_sync(self, level: str) -> None:
        if level != self._current_sync:
            assert self._conn is not None
            self._conn.execute(f"PRAGMA synchronous = {level}")
            self._current_sync = level

    async def open(self) -> None:
        """Open the connection now (on the writer thread) rather than on the first call."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._connection)

    async def run(
        self, fn: Callable[[sqlite3.Cursor], T], *, write: bool = True, relaxed: bool = False
    ) -> T:
        """Run `fn(cursor)` (inside a committed transaction if it writes) and return its result."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, write, relaxed, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            fns = [fn for fn, _, _, _ in batch]
            write = any(w for _, w, _, _ in batch)
            relaxed = all(r or not w for _, w, r, _ in batch)
            try:
                outcomes = await loop.run_in_executor(
                    self._thread, self._run_batch, fns, write, relaxed
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
        self, fns: list[_Fn], write: bool = True, relaxed: bool = False
    ) -> list[_Outcome]:
        delay = 0.002
        for attempt in range(ATTEMPTS):
            try:
                if not write:
                    return self._reads(fns)
                return self._once(fns, relaxed)
            except sqlite3.OperationalError as exc:
                if attempt == ATTEMPTS - 1 or not is_transient(exc):
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)
        raise AssertionError("unreachable")

    def _reads(self, fns: list[_Fn]) -> list[_Outcome]:
        """Reads only: no transaction needed (WAL readers never wait for the writer)."""
        cur = self._connection().cursor()
        outcomes: list[_Outcome] = []
        try:
            for fn in fns:
                try:
                    outcomes.append((True, fn(cur)))
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    outcomes.append((False, exc))
        finally:
            cur.close()
        return outcomes

    def _once(self, fns: list[_Fn], relaxed: bool = False) -> list[_Outcome]:
        """One transaction; a lone function runs without a savepoint (its error rolls back)."""
        conn = self._connection()
        if self._sync in _DURABLE:
            self._set_sync("NORMAL" if relaxed else self._sync)
        cur = conn.cursor()
        alone = len(fns) == 1
        outcomes: list[_Outcome] = []
        cur.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                if not alone:
                    cur.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, fn(cur)))
                except Exception as exc:
                    if is_transient(exc):
                        raise  # retry the whole batch
                    if alone:
                        if conn.in_transaction:
                            cur.execute("ROLLBACK")
                        return [(False, exc)]
                    cur.execute("ROLLBACK TO op")
                    outcomes.append((False, exc))
                if not alone:
                    cur.execute("RELEASE op")
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        return outcomes

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_connection)
        self._thread.shutdown(wait=False)
