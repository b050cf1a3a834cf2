"""PostgreSQL: a hold and a capture each in one statement (data-modifying CTEs).

Same rules as the portable statements in sql_wallet, but one round trip instead of two or
three inside the transaction, which shortens how long the account's row stays locked: that
row is what concurrent spenders of one account queue on.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from billing.wallet.base import CAPTURE, CAPTURED, HELD
from billing.wallet.sql_schema import UtcDateTime, accounts, entries, holds

_acct = sa.bindparam("p_acct", type_=sa.String())
_amt = sa.bindparam("p_amt", type_=sa.BigInteger())
_key = sa.bindparam("p_key", type_=sa.String())
_id = sa.bindparam("p_id", type_=sa.BigInteger())
_now = sa.bindparam("p_now", type_=UtcDateTime())
_exp = sa.bindparam("p_exp", type_=UtcDateTime())
_reason = sa.bindparam("p_reason", type_=sa.Text())
_ref = sa.bindparam("p_ref", type_=sa.String())
_meta = sa.bindparam("p_meta", type_=sa.JSON(none_as_null=True))


def hold_statement() -> sa.Select[tuple[int | None, str | None]]:
    """Insert the hold unless its key exists, and reserve only if available covers it.

    Returns one row (id, ok): id NULL means the key was already used (a replay); ok NULL with
    an id means the reservation was refused (the caller rolls back the insert). Keys are
    unique per account.
    """
    ins = (
        postgresql.insert(holds)
        .values(
            account=_acct,
            amount=_amt,
            key=_key,
            status=HELD,
            captured=0,
            created_at=_now,
            expires_at=_exp,
        )
        .on_conflict_do_nothing(index_elements=["account", "key"])
        .returning(holds.c.id)
        .cte("ins")
    )
    upd = (
        sa.update(accounts)
        .where(accounts.c.id == _acct)
        .where(accounts.c.total - accounts.c.held >= _amt)
        .where(sa.exists(sa.select(ins.c.id)))
        .values(held=accounts.c.held + _amt)
        .returning(accounts.c.id)
        .cte("upd")
    )
    return sa.select(
        sa.select(ins.c.id).scalar_subquery().label("id"),
        sa.select(upd.c.id).scalar_subquery().label("ok"),
    )


def capture_statement(capture_prefix: str) -> sa.Select[tuple[str, str, int]]:
    """Close a live, unexpired, large-enough hold; move the money; write the ledger line.

    Returns (account, hold key, entry id), or no row when the hold could not be captured.
    """
    h = (
        sa.update(holds)
        .where(holds.c.id == _id)
        .where(holds.c.status == HELD)
        .where(holds.c.expires_at > _now)
        .where(holds.c.amount >= _amt)
        .values(status=CAPTURED, captured=_amt, closed_at=_now)
        .returning(holds.c.account, holds.c.amount, holds.c.key)
        .cte("h")
    )
    moved = (
        sa.update(accounts)
        .where(accounts.c.id == h.c.account)
        .values(held=accounts.c.held - h.c.amount, total=accounts.c.total - _amt)
        .returning(accounts.c.id)
        .cte("moved")
    )
    line = (
        sa.insert(entries)
        .from_select(
            ["account", "kind", "amount", "key", "reason", "ref", "meta", "created_at"],
            sa.select(
                h.c.account,
                sa.literal(CAPTURE, sa.String()),
                -_amt,
                sa.literal(capture_prefix, sa.String()) + h.c.key,
                _reason,
                _ref,
                _meta,
                _now,
            ),
        )
        .returning(entries.c.id)
        .cte("line")
    )
    return sa.select(
        h.c.account, h.c.key, line.c.id, sa.select(moved.c.id).scalar_subquery().label("moved")
    ).select_from(h.join(line, sa.true()))
