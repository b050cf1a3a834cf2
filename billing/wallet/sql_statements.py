"""The SQL wallet's statements, built once per wallet, and its rows read back as values.

SQLAlchemy Core for every backend (sql_wallet runs them); SQLite files run the same
transactions as fixed SQL text on the writer thread instead (sql_lite), and PostgreSQL's
one-statement hold and capture come from sql_pg. Kept apart from sql_wallet so the wallet's
module reads as the money rules, and this one as the SQL they are written in.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from billing.wallet import sql_lite, sql_pg
from billing.wallet.base import CAPTURED, EXPIRED, HELD, MAX_TOTAL, VOIDED, Entry, Hold
from billing.wallet.sql_schema import accounts, entries, holds

CAPTURE_KEY_PREFIX = sql_lite.CAPTURE_KEY_PREFIX
# Live holds, spelled as a literal: the sweeper's index is partial on exactly this (0004).
LIVE = holds.c.status == sa.literal_column(f"'{HELD}'")

_p = sa.bindparam


def parse_id(value: str) -> int | None:
    """Ids are short decimal strings (an operator types them); anything else matches nothing."""
    value = str(value).strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def entry_from_row(row: Row[Any]) -> Entry:
    """A ledger row as the Wallet protocol's Entry."""
    m = row._mapping
    return Entry(
        id=str(m["id"]),
        account=m["account"],
        kind=m["kind"],
        amount=m["amount"],
        key=m["key"],
        reason=m["reason"],
        created_at=m["created_at"],
        ref=m["ref"],
        meta=dict(m["meta"] or {}),
    )


def hold_from_row(row: Row[Any], entry_id: Any = None) -> Hold:
    """A hold row (with its capture's entry id, when selected) as the protocol's Hold."""
    m = row._mapping
    if entry_id is None and "entry_id" in m:
        entry_id = m["entry_id"]
    return Hold(
        id=str(m["id"]),
        account=m["account"],
        amount=m["amount"],
        key=m["key"],
        status=m["status"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        captured=m["captured"],
        entry_id=None if entry_id is None else str(entry_id),
    )


HOLD_COLS = [c for c in holds.c if c.name not in ("closed_at", "reason")]
_capture_entry = entries.alias("capture_entry")
# A hold with the id of its capture entry (found through the capture's derived key).
HOLD_SELECT = sa.select(*HOLD_COLS, _capture_entry.c.id.label("entry_id")).select_from(
    holds.outerjoin(
        _capture_entry,
        sa.and_(
            _capture_entry.c.account == holds.c.account,
            _capture_entry.c.key == sa.literal(CAPTURE_KEY_PREFIX) + holds.c.key,
        ),
    )
)


class Statements:
    """Every statement of the SQL wallet, for SQLite (`is_sqlite`) or PostgreSQL."""

    def __init__(self, is_sqlite: bool) -> None:
        insert = sqlite.insert if is_sqlite else postgresql.insert
        self.pg_hold = None if is_sqlite else sql_pg.hold_statement()
        self.pg_capture = None if is_sqlite else sql_pg.capture_statement(CAPTURE_KEY_PREFIX)
        self.fast_capture = sql_pg.fast_capture(CAPTURE_KEY_PREFIX)
        self.lock_account = (
            sa.select(accounts.c.id).where(accounts.c.id == _p("p_acct")).with_for_update()
        )
        self.ins_entry = (
            insert(entries)
            .on_conflict_do_nothing(index_elements=["account", "key"])
            .returning(entries.c.id)
        )
        self.ins_entry_plain = sa.insert(entries).returning(entries.c.id)
        self.entry_by_key = (
            sa.select(entries)
            .where(entries.c.account == _p("p_acct"))
            .where(entries.c.key == _p("p_key"))
        )
        self.hold_key_used = (
            sa.select(holds.c.id)
            .where(holds.c.account == _p("p_acct"))
            .where(holds.c.key == _p("p_key"))
        )
        self.entry_key_used = (
            sa.select(entries.c.id)
            .where(entries.c.account == _p("p_acct"))
            .where(entries.c.key == _p("p_key"))
        )
        self.entry_by_id = sa.select(entries).where(entries.c.id == _p("p_id"))
        stmt = insert(accounts).values(id=_p("p_acct"), total=_p("p_amt"), held=0)
        # No row back: the credit would take the total past MAX_TOTAL (nothing is updated).
        self.credit_account = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={"total": accounts.c.total + stmt.excluded.total},
            where=accounts.c.total <= sa.literal(MAX_TOTAL, sa.BigInteger()) - stmt.excluded.total,
        ).returning(accounts.c.total)
        self.debit_account = (
            sa.update(accounts)
            .where(accounts.c.id == _p("p_acct"))
            .where(accounts.c.total - accounts.c.held >= _p("p_amt"))
            .values(total=accounts.c.total - _p("p_amt"))
        )
        self.reserve = (
            sa.update(accounts)
            .where(accounts.c.id == _p("p_acct"))
            .where(accounts.c.total - accounts.c.held >= _p("p_amt"))
            .values(held=accounts.c.held + _p("p_amt"))
        )
        self.release = (
            sa.update(accounts)
            .where(accounts.c.id == _p("p_acct"))
            .values(held=accounts.c.held - _p("p_held"), total=accounts.c.total - _p("p_spent"))
        )
        self.available = sa.select(accounts.c.total - accounts.c.held).where(
            accounts.c.id == _p("p_acct")
        )
        self.balance = sa.select(accounts.c.total, accounts.c.held).where(
            accounts.c.id == _p("p_acct")
        )
        self.ins_hold = (
            insert(holds)
            .on_conflict_do_nothing(index_elements=["account", "key"])
            .returning(holds.c.id)
        )
        self.hold_by_key = HOLD_SELECT.where(holds.c.account == _p("p_acct")).where(
            holds.c.key == _p("p_key")
        )
        self.hold_by_id = HOLD_SELECT.where(holds.c.id == _p("p_id"))
        self.capture_hold = (
            sa.update(holds)
            .where(holds.c.id == _p("p_id"))
            .where(holds.c.status == HELD)
            .where(holds.c.expires_at > _p("p_now"))
            .where(holds.c.amount >= _p("p_amt"))
            .values(status=CAPTURED, captured=_p("p_amt"), closed_at=_p("p_now"))
            .returning(holds.c.account, holds.c.amount, holds.c.key)
        )
        self.close_hold = (
            sa.update(holds)
            .where(holds.c.id == _p("p_id"))
            .where(holds.c.status == HELD)
            .values(
                status=sa.case((holds.c.expires_at <= _p("p_now"), EXPIRED), else_=VOIDED),
                closed_at=_p("p_now"),
                reason=_p("p_reason"),
            )
            .returning(*HOLD_COLS)
        )
        self.expire_due = (
            sa.update(holds)
            .where(LIVE)  # a literal, so the planner can use the live-holds partial index
            .where(holds.c.expires_at <= _p("p_now"))
            .values(status=EXPIRED, closed_at=_p("p_now"), reason="expired")
            .returning(holds.c.account, holds.c.amount)
        )
