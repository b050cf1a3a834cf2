"""Wallet: accounts (total, held), the ledger of entries, and holds.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Integer primary keys are SQLite's rowid (short ids users can type); BIGINT on PostgreSQL.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "wallet_accounts",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("total", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("held", sa.BigInteger(), nullable=False, server_default="0"),
        sa.CheckConstraint("held >= 0", name="ck_wallet_accounts_held"),
        sa.CheckConstraint("total >= held", name="ck_wallet_accounts_available"),
    )
    op.create_table(
        "wallet_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("ref", sa.String(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("key", name="uq_wallet_entries_key"),
    )
    op.create_index("ix_wallet_entries_account_id", "wallet_entries", ["account", "id"])
    op.create_table(
        "wallet_holds",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("closed_at", _TS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.UniqueConstraint("key", name="uq_wallet_holds_key"),
        sa.CheckConstraint("amount > 0", name="ck_wallet_holds_amount"),
        sa.CheckConstraint("captured >= 0 AND captured <= amount", name="ck_wallet_holds_captured"),
    )
    op.create_index("ix_wallet_holds_status_expires", "wallet_holds", ["status", "expires_at"])


def downgrade() -> None:
    op.drop_table("wallet_holds")
    op.drop_table("wallet_entries")
    op.drop_table("wallet_accounts")
