"""The wallet's tables as SQLAlchemy Core sees them (the DDL lives in the Alembic migrations).

Idempotency keys are unique per account: UNIQUE(account, key) on entries and holds (0003).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the wallet; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData()

accounts = sa.Table(
    "wallet_accounts",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("total", sa.BigInteger(), nullable=False),
    sa.Column("held", sa.BigInteger(), nullable=False),
)

entries = sa.Table(
    "wallet_entries",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount", sa.BigInteger(), nullable=False),
    sa.Column("key", sa.String(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("ref", sa.String(), nullable=True),
    sa.Column("meta", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("account", "key", name="uq_wallet_entries_account_key"),
)

holds = sa.Table(
    "wallet_holds",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(), nullable=False),
    sa.Column("amount", sa.BigInteger(), nullable=False),
    sa.Column("key", sa.String(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("captured", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("closed_at", UtcDateTime(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.UniqueConstraint("account", "key", name="uq_wallet_holds_account_key"),
)
