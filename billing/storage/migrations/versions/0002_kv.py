"""Bot store: string keys with optional expiry, and simple sets (no money here).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bot_kv",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        # Milliseconds since the epoch; NULL never expires. An expired row reads as absent.
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_bot_kv_expires_at", "bot_kv", ["expires_at"])
    op.create_table(
        "bot_kv_sets",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("member", sa.String(), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("bot_kv_sets")
    op.drop_table("bot_kv")
