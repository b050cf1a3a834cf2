"""Wallet: the sweeper's index covers live holds only.

Revision ID: 0004
Revises: 0003

ix_wallet_holds_status_expires indexed every hold ever made by (status, expires_at), so it grew
with the ledger, and every capture or void moved a row from one end of it to the other (two
index pages written). The sweeper only ever asks for live holds that are due, so a partial
index on expires_at WHERE status = 'held' answers it: it holds just the live holds, a capture or
void only removes one entry, and a hold adds one. SQLite and PostgreSQL both support partial
indexes; the queries spell the status as a literal so both planners can use it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LIVE = sa.text("status = 'held'")


def upgrade() -> None:
    op.drop_index("ix_wallet_holds_status_expires", table_name="wallet_holds")
    op.create_index(
        "ix_wallet_holds_live_expires",
        "wallet_holds",
        ["expires_at"],
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_wallet_holds_live_expires", table_name="wallet_holds")
    op.create_index("ix_wallet_holds_status_expires", "wallet_holds", ["status", "expires_at"])
