"""Choose the key-value store by URL: the same URL as the wallet, so both live together."""

from __future__ import annotations

from bot.store.base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str) -> Store:
    """Open the store at `url`: sqlite+aiosqlite://, postgresql+asyncpg:// or redis://.

    A SQLite file gets `SqliteStore` (plain sqlite3 on a thread of its own, group commit);
    SQL tables are created by the same Alembic migrations as the wallet's (revision 0002).
    """
    if url.startswith(("redis://", "rediss://", "unix://")):
        from bot.store.redis_store import RedisStore

        return await RedisStore.open(url)
    if url.startswith("sqlite") and not _in_memory(url):
        from bot.store.sqlite_store import SqliteStore

        return await SqliteStore.open(url)
    if url.startswith(("sqlite", "postgresql", "postgres")):
        from bot.store.sql_store import SqlStore

        return await SqlStore.open(url)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")


def _in_memory(url: str) -> bool:
    """A sqlite URL without a file: one connection of SqlStore's own, not SqliteStore's."""
    from billing.storage.sql_engine import normalize_url, sqlite_options

    return sqlite_options(normalize_url(url))[2]
