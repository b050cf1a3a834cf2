"""Choose the key-value store by URL: the same URL as the wallet, so both live together."""

from __future__ import annotations

from bot.store.base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str) -> Store:
    """Open the store at `url`: sqlite+aiosqlite://, postgresql+asyncpg:// or redis://.

    SQL tables are created by the same Alembic migrations as the wallet's (revision 0002).
    """
    if url.startswith(("redis://", "rediss://", "unix://")):
        from bot.store.redis_store import RedisStore

        return await RedisStore.open(url)
    if url.startswith(("sqlite", "postgresql", "postgres")):
        from bot.store.sql_store import SqlStore

        return await SqlStore.open(url)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")
