"""Migrations keep an existing wallet intact: 0003 (keys unique per account), 0004 (the
sweeper's index on live holds only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import billing
from billing import Balance
from billing.storage.migrations import upgrade
from billing.storage.sql_engine import create_engine, writer
from billing.wallet.sql_schema import accounts, entries, holds


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def _old_wallet(conn: Connection) -> None:
    """A wallet as revision 0002 left it: one account, its top-up and a live hold."""
    upgrade(conn, "0002")
    now = datetime.now(UTC)
    conn.execute(sa.insert(accounts).values(id="wechat:bob", total=100_000, held=5_000))
    conn.execute(
        sa.insert(entries).values(
            account="wechat:bob",
            kind="credit",
            amount=100_000,
            key="wxpay:cb1",
            reason="WeChat Pay top-up",
            created_at=now,
        )
    )
    conn.execute(
        sa.insert(holds).values(
            account="wechat:bob",
            amount=5_000,
            key="chat:m1",
            status="held",
            captured=0,
            created_at=now,
            expires_at=now + timedelta(minutes=5),
        )
    )


async def test_upgrade_keeps_the_ledger_and_scopes_keys_per_account(sql_url: str) -> None:
    engine = create_engine(sql_url)
    try:
        async with writer(engine).begin() as conn:
            await conn.run_sync(_old_wallet)
    finally:
        await engine.dispose()
    wallet = await billing.open_wallet(sql_url)  # migrates to head
    try:
        assert await wallet.balance("wechat:bob") == Balance("wechat:bob", 100_000, 5_000)
        (old,) = await wallet.entries("wechat:bob")
        assert old.key == "wxpay:cb1" and old.amount == 100_000
        (live,) = await wallet.open_holds()
        assert live.key == "chat:m1" and live.account == "wechat:bob"
        # the replay on the same account is still the first credit
        assert await wallet.credit("wechat:bob", 100_000, "wxpay:cb1", "WeChat Pay top-up") == old
        # the same keys on another account are that account's own operations
        await wallet.credit("telegram:bob", 100_000, "wxpay:cb1", "WeChat Pay top-up")
        other = await wallet.hold("telegram:bob", 5_000, "chat:m1", ttl=60)
        assert other.id != live.id and other.account == "telegram:bob"
        assert await wallet.balance("telegram:bob") == Balance("telegram:bob", 100_000, 5_000)
        assert await wallet.balance("wechat:bob") == Balance("wechat:bob", 100_000, 5_000)
    finally:
        await wallet.close()


async def test_upgrade_to_live_holds_index_keeps_the_sweeper_working(sql_url: str) -> None:
    """A wallet at 0003 with a live hold and a due hold: after 0004 the due one is swept."""
    engine = create_engine(sql_url)
    now = datetime.now(UTC)

    def at_0003(conn: Connection) -> None:
        _old_wallet(conn)
        upgrade(conn, "0003")
        conn.execute(sa.update(accounts).values(held=accounts.c.held + 7_000))
        conn.execute(
            sa.insert(holds).values(
                account="wechat:bob",
                amount=7_000,
                key="chat:old",
                status="held",
                captured=0,
                created_at=now - timedelta(hours=2),
                expires_at=now - timedelta(hours=1),
            )
        )

    try:
        async with writer(engine).begin() as conn:
            await conn.run_sync(at_0003)
    finally:
        await engine.dispose()
    wallet = await billing.open_wallet(sql_url)
    try:
        assert await wallet.balance("wechat:bob") == Balance("wechat:bob", 100_000, 12_000)
        assert await wallet.sweep() == 1
        (live,) = await wallet.open_holds()
        assert live.key == "chat:m1"
        assert await wallet.balance("wechat:bob") == Balance("wechat:bob", 100_000, 5_000)
        engine = wallet.engine  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            names = await conn.run_sync(
                lambda c: {ix["name"] for ix in sa.inspect(c).get_indexes("wallet_holds")}
            )
        assert "ix_wallet_holds_live_expires" in names
        assert "ix_wallet_holds_status_expires" not in names
    finally:
        await wallet.close()
