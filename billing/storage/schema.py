"""Table shapes the stores share with their migrations, as SQLAlchemy Core sees them.

The DDL lives in the Alembic migrations (`billing.storage.migrations`); these mirror it for the
code that reads and writes. Here: the column types every SQL table of creditbot uses the same
way (`ID`, `UtcDateTime`) and the key-value tables (revision 0002) that the bot's store keeps.
The wallet's own tables (billing.wallet.sql_schema) are built from the same types.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = ["ID", "UtcDateTime", "kv", "kv_metadata", "kv_sets"]

# Integer primary keys are SQLite's rowid (short ids users can type); BIGINT on PostgreSQL.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


kv_metadata = sa.MetaData()

# String keys to string values; `expires_at` is milliseconds since the epoch, NULL never
# expires, and an expired row reads as absent (it is purged now and then).
kv = sa.Table(
    "bot_kv",
    kv_metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=True),
)

# Simple sets: one row per (set name, member).
kv_sets = sa.Table(
    "bot_kv_sets",
    kv_metadata,
    sa.Column("name", sa.String(), primary_key=True),
    sa.Column("member", sa.String(), primary_key=True),
)
