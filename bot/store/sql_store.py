"""The bot's key-value store on SQL (SQLite or PostgreSQL), beside the wallet's tables.

Each call is one statement, so it is atomic across processes without row locks:
- `add` is `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE <the old row has expired>
  RETURNING key`: a returned row means this call set the key;
- `incr` is an upsert that adds one to a live row or starts an expired one again at 1.
Expiry is milliseconds since the epoch; an expired row reads as absent and is purged now and
then. Tables come from Alembic revision 0002 (`billing.storage.schema` mirrors them), run by
the same `migrate` as the wallet's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.storage.schema import kv, kv_sets
from billing.storage.sql_engine import create_engine, is_sqlite, migrate, retrying, writer
from bot.store.base import Op, run_in_order

T = TypeVar("T")

_PURGE_EVERY = 1000  # writes between two purges of expired rows


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _expiry(now: int, ttl: float | None) -> int | None:
    return None if ttl is None else now + max(1, int(ttl * 1000))


def _live(now: int) -> sa.ColumnElement[bool]:
    return sa.or_(kv.c.expires_at.is_(None), kv.c.expires_at > now)


class SqlStore:
    """Store protocol on SQLite or PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._insert = sqlite.insert if is_sqlite(engine) else postgresql.insert
        # SQLite has one writer per file anyway; queue this process's writes instead of
        # letting them fight over the lock.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if is_sqlite(engine) else None
        self._writes = 0

    @classmethod
    async def open(cls, url: str) -> SqlStore:
        """Open (creating if needed) and migrate the database at `url`."""
        engine = create_engine(url)
        try:
            await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def _write(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async def once() -> T:
            lock = self._write_lock or contextlib.nullcontext()
            async with lock, self._writer.begin() as conn:
                return await fn(conn)

        result = await retrying(once)
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            await retrying(self._purge)
        return result

    async def _purge(self) -> None:
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self._writer.begin() as conn:
            await conn.execute(sa.delete(kv).where(kv.c.expires_at <= _now_ms()))

    async def _read(self, stmt: Any) -> Any:
        async def once() -> Any:
            async with self._engine.connect() as conn:
                return (await conn.execute(stmt)).all()

        return await retrying(once)

    async def get(self, key: str) -> str | None:
        rows = await self._read(sa.select(kv.c.value).where(kv.c.key == key, _live(_now_ms())))
        return rows[0][0] if rows else None

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """Several values in one query, in the order of `keys` (None for absent)."""
        keys = list(keys)
        if not keys:
            return []
        rows = await self._read(
            sa.select(kv.c.key, kv.c.value).where(kv.c.key.in_(keys), _live(_now_ms()))
        )
        found = dict(rows)
        return [found.get(key) for key in keys]

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        ins = self._insert(kv).values(key=key, value=value, expires_at=_expiry(_now_ms(), ttl))
        stmt = ins.on_conflict_do_update(
            index_elements=[kv.c.key],
            set_={"value": ins.excluded.value, "expires_at": ins.excluded.expires_at},
        )

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        await self._write(tx)

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        now = _now_ms()
        ins = self._insert(kv).values(key=key, value=value, expires_at=_expiry(now, ttl))
        stmt = ins.on_conflict_do_update(
            index_elements=[kv.c.key],
            set_={"value": ins.excluded.value, "expires_at": ins.excluded.expires_at},
            where=sa.and_(kv.c.expires_at.is_not(None), kv.c.expires_at <= now),
        ).returning(kv.c.key)

        async def tx(conn: AsyncConnection) -> bool:
            return (await conn.execute(stmt)).first() is not None

        return await self._write(tx)

    async def delete(self, key: str) -> bool:
        return await self._delete(kv.c.key == key)

    async def delete_if(self, key: str, value: str) -> bool:
        return await self._delete(kv.c.key == key, kv.c.value == value)

    async def _delete(self, *where: sa.ColumnElement[bool]) -> bool:
        """One DELETE (atomic on its own); True if it deleted a live row."""
        now = _now_ms()
        stmt = sa.delete(kv).where(*where).returning(kv.c.expires_at)

        async def tx(conn: AsyncConnection) -> bool:
            row = (await conn.execute(stmt)).first()
            return row is not None and (row[0] is None or row[0] > now)

        return await self._write(tx)

    async def incr(self, key: str, ttl: float | None = None) -> int:
        now = _now_ms()
        ins = self._insert(kv).values(key=key, value="1", expires_at=_expiry(now, ttl))
        live = _live(now)
        stmt = ins.on_conflict_do_update(
            index_elements=[kv.c.key],
            set_={
                "value": sa.case(
                    (live, sa.cast(sa.cast(kv.c.value, sa.BigInteger) + 1, sa.Text)),
                    else_=sa.literal("1", sa.Text),
                ),
                "expires_at": sa.case((live, kv.c.expires_at), else_=ins.excluded.expires_at),
            },
        ).returning(kv.c.value)

        async def tx(conn: AsyncConnection) -> int:
            return int((await conn.execute(stmt)).scalar_one())

        return await self._write(tx)

    async def sadd(self, name: str, member: str) -> None:
        stmt = self._insert(kv_sets).values(name=name, member=member).on_conflict_do_nothing()

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        await self._write(tx)

    async def srem(self, name: str, member: str) -> None:
        stmt = sa.delete(kv_sets).where(kv_sets.c.name == name, kv_sets.c.member == member)

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        await self._write(tx)

    async def smembers(self, name: str) -> set[str]:
        rows = await self._read(sa.select(kv_sets.c.member).where(kv_sets.c.name == name))
        return {row[0] for row in rows}

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        """The ops one after another (each its own statement, as for a single call)."""
        return await run_in_order(self, ops)

    async def close(self) -> None:
        await self._engine.dispose()
