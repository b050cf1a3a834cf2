"""SQLite's writer: one thread, and every write waiting at that moment committed together.

SQLite admits one writer at a time and a commit costs an fsync (synchronous=FULL). So the
wallet hands each write transaction, as a plain blocking function, to one thread of its own,
which runs whatever has queued up inside a single BEGIN IMMEDIATE ... COMMIT, each function in
its own SAVEPOINT: a refused or failed operation rolls back alone, the rest commit, and one
fsync serves them all (group commit). Nobody is told a result before its commit is done. A lone
write runs without a savepoint, so at low load it is a plain transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from billing.wallet.sql_engine import is_transient, retrying_sync

T = TypeVar("T")

MAX_BATCH = 256

_Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


class SqliteWriter:
    """Runs write transactions for one process on one thread, batching concurrent ones."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wallet-writer")
        self._pending: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` inside a committed write transaction and return what it returned."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            fns = [fn for fn, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._thread, self._run_batch, fns)
            except Exception as exc:  # the whole transaction failed (e.g. the disk)
                outcomes = [(False, exc)] * len(batch)
            for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
                if fut.done():  # the caller gave up waiting; its write stands or not as above
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_batch(self, fns: list[Callable[[Connection], Any]]) -> list[_Outcome]:
        if len(fns) == 1:
            try:
                return [(True, retrying_sync(lambda: self._alone(fns[0])))]
            except Exception as exc:
                return [(False, exc)]
        return retrying_sync(lambda: self._together(fns))

    def _alone(self, fn: Callable[[Connection], T]) -> T:
        with self._engine.begin() as conn:
            return fn(conn)

    def _together(self, fns: list[Callable[[Connection], Any]]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        with self._engine.begin() as conn:
            for fn in fns:
                try:
                    with conn.begin_nested():
                        outcomes.append((True, fn(conn)))
                except DBAPIError as exc:
                    if is_transient(exc):
                        raise  # retry the whole batch
                    outcomes.append((False, exc))
                except Exception as exc:
                    outcomes.append((False, exc))
        return outcomes

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._engine.dispose)
        self._thread.shutdown(wait=False)
