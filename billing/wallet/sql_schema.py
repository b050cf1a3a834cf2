"""The wallet's tables as SQLAlchemy Core sees them (the DDL lives in the Alembic migrations).

Idempotency keys are unique per account: UNIQUE(account, key) on entries and holds (0003).
Column types shared with every other table come from `billing.storage.schema`.
"""

from __future__ import annotations

import sqlalchemy as sa

from billing.storage.schema import ID, UtcDateTime

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
    sa.Column("id", ID, primary_key=True, autoincrement=True),
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
    sa.Column("id", ID, primary_key=True, autoincrement=True),
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
