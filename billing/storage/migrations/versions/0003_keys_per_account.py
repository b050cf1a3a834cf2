"""Wallet: idempotency keys are unique per account, not across the whole wallet.

Revision ID: 0003
Revises: 0002

UNIQUE(key) on the ledger and on holds becomes UNIQUE(account, key), as on the Redis wallet,
whose keys live inside each account. Existing rows are kept: a key unique across the wallet is
unique within its account too. Batch mode rebuilds the tables on SQLite (it cannot drop a
constraint in place) and alters them in place on PostgreSQL.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLES = ("wallet_entries", "wallet_holds")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_key", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_account_key", ["account", "key"])


def downgrade() -> None:
    # Fails if two accounts now share a key, rather than dropping either row.
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_account_key", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_key", ["key"])
