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

After a fork (multiprocessing's default start method, pre-fork servers) the child has the
writers but not their threads: every writer is reset there (`_forget_parent`), and its
first call in the child starts a thread and opens a connection of the child's own. The
parent's connection is never used or closed in the child (SQLite forbids carrying a
connection across fork): it is kept, unused, until the child exits (billing.forking).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from billing import forking
from billing.storage.sql_engine import BUSY_TIMEOUT_MS

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


class _Close:
    """Asks the writer thread to close its connection and stop."""

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self.fut = fut


_Item = tuple[_Fn, bool, bool, "asyncio.Future[Any]"]  # (fn, writes?, relaxed?, future)


class SqliteWriter:
    """Runs write transactions for one process on one thread, batching concurrent ones.

    The thread waits on a queue; whatever has queued by the time it takes the next batch runs
    as one transaction, and each caller's future is answered from the thread through its event
    loop (`call_soon_threadsafe`, once per batch and loop). That is one hand-off each way, as
    cheap as a bare aiosqlite call; an executor plus a flusher task would cost several more
    event-loop turns per write.
    """

    _registry: ClassVar[dict[tuple[str, str], SqliteWriter]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def shared(cls, path: str, synchronous: str, *, name: str = "sqlite-writer") -> SqliteWriter:
        """The process's one writer for this file, shared by whoever writes to it.

        The wallet and the bot's store live in the same file by default. Two writers would
        take turns at SQLite's write lock (a loser sleeps in the busy handler, milliseconds at
        a time) and flush the disk separately; one writer commits both together. Each user
        calls close() once; the last one really closes it.
        """
        key = (os.path.realpath(path), synchronous)
        with cls._registry_lock:
            writer = cls._registry.get(key)
            if writer is None or writer._closed:
                writer = cls(path, synchronous, name=name)
                writer._shared_key = key
                cls._registry[key] = writer
            writer._users += 1
            return writer

    def __init__(self, path: str, synchronous: str, *, name: str = "wallet-writer") -> None:
        self._shared_key: tuple[str, str] | None = None
        self._users = 0
        self._path = path
        self._sync = synchronous
        self._current_sync = ""
        self._conn: sqlite3.Connection | None = None
        self._name = name
        self._queue: queue.SimpleQueue[_Item | _Close] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        forking.reset_in_child(self, SqliteWriter._forget_parent)

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

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()

    async def open(self) -> None:
        """Open the connection now (on the writer thread) rather than on the first call."""
        await self.run(lambda cur: None, write=False)

    async def run(
        self, fn: Callable[[sqlite3.Cursor], T], *, write: bool = True, relaxed: bool = False
    ) -> T:
        """Run `fn(cursor)` (inside a committed transaction if it writes) and return its result."""
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        thread = self._thread
        if thread is None or not thread.is_alive():  # not started yet, or died (a fork)
            self._start()
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((fn, write, relaxed, fut))
        return await fut

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's thread, queue and connection (see module doc)."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self._thread = None
        self._queue = queue.SimpleQueue()  # the parent's pending calls are the parent's
        if self._conn is not None:
            forking.keep(self._conn)
            self._conn = None
            self._current_sync = ""

    # -- on the writer thread ----------------------------------------------------------------

    def _serve(self) -> None:
        """Take what has queued, run it as one batch, answer; until asked to close."""
        q = self._queue
        while True:
            item = q.get()
            if isinstance(item, _Close):
                self._close_connection()
                _answer_on_loop(item.fut, True, None)
                return
            if q.empty():  # alone (the usual case at low load): no batch bookkeeping
                fn, write, relaxed, fut = item
                try:
                    outcome = self._run_batch([fn], write, relaxed)[0]
                except Exception as exc:  # the whole transaction failed (e.g. the disk)
                    outcome = (False, exc)
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    fut.get_loop().call_soon_threadsafe(_settle, [(fut, outcome)])
                continue
            batch: list[_Item] = [item]
            closing: _Close | None = None
            while len(batch) < MAX_BATCH and not q.empty():
                queued = q.get_nowait()
                if isinstance(queued, _Close):
                    closing = queued
                    break
                batch.append(queued)
            self._answer(batch, self._outcomes(batch))
            if closing is not None:
                self._close_connection()
                _answer_on_loop(closing.fut, True, None)
                return

    def _outcomes(self, batch: list[_Item]) -> list[_Outcome]:
        fns = [fn for fn, _, _, _ in batch]
        write = any(w for _, w, _, _ in batch)
        relaxed = all(r or not w for _, w, r, _ in batch)
        try:
            return self._run_batch(fns, write, relaxed)
        except Exception as exc:  # the whole transaction failed (e.g. the disk)
            return [(False, exc)] * len(batch)

    @staticmethod
    def _answer(batch: list[_Item], outcomes: list[_Outcome]) -> None:
        """Hand each result to its caller's loop: one wake-up per loop per batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
        for (_, _, _, fut), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(fut.get_loop(), []).append((fut, outcome))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, answers)

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
        """Finish what is queued, close the connection, stop the thread (a shared writer:
        once its last user closes it)."""
        if self._closed:
            return
        if self._shared_key is not None:
            with self._registry_lock:
                self._users -= 1
                if self._users > 0:
                    return
                if self._registry.get(self._shared_key) is self:
                    del self._registry[self._shared_key]
        self._closed = True
        if self._thread is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(_Close(fut))
        await fut
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)


def _settle(answers: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    """On the caller's loop: resolve each future (a caller that gave up is skipped; its write
    stands or not as the batch went)."""
    for fut, (ok, value) in answers:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _fresh_registry_lock(cls: type[SqliteWriter]) -> None:
    """In a forked child: another thread of the parent may have held the registry's lock."""
    cls._registry_lock = threading.Lock()


forking.reset_in_child(SqliteWriter, _fresh_registry_lock)


def _answer_on_loop(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    with contextlib.suppress(RuntimeError):
        fut.get_loop().call_soon_threadsafe(_settle, [(fut, (ok, value))])
