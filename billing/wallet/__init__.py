"""Choose the wallet backend by URL."""

from __future__ import annotations

from billing.wallet.base import Wallet


async def open_wallet(url: str) -> Wallet:
    """Open the wallet at `url`: sqlite+aiosqlite://, postgresql+asyncpg:// or redis://.

    SQL schemas are brought up to date with Alembic before the wallet is returned.
    """
    if url.startswith(("redis://", "rediss://", "unix://")):
        from billing.wallet.redis_wallet import RedisWallet

        return await RedisWallet.open(url)
    if url.startswith(("sqlite", "postgresql", "postgres")):
        from billing.wallet.sql_wallet import SqlWallet

        return await SqlWallet.open(url)
    raise ValueError(f"unsupported wallet URL scheme: {url.split(':', 1)[0]!r}")
