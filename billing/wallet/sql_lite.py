"""The SQLite wallet's write transactions as plain sqlite3 statements with fixed SQL text.

They run on the writer thread (sqlite_writer) and mirror the Core transactions of sql_wallet
statement for statement: the same tables, the same single-statement conditional updates
(`held + a WHERE total - held >= a`, `WHERE status = 'held'`), the same idempotency rules.
Only the cost differs: sqlite3 caches each compiled statement, where SQLAlchemy would build and
compile every one again on this thread. Values are stored as SQLAlchemy stores them on SQLite
(timestamps as naive UTC text with microseconds, meta as JSON text or NULL), so the Core reads
and these writes see the same rows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from billing.wallet.base import (
    CAPTURE,
    CAPTURED,
    CREDIT,
    EXPIRED,
    HELD,
    MAX_TOTAL,
    VOIDED,
    BalanceLimitExceeded,
    Entry,
    Hold,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    WalletError,
)

CAPTURE_KEY_PREFIX = "capture:"  # a capture's ledger key is "capture:" + the hold's key


class Retry(Exception):
    """A concurrent change raced this transaction's view; run it again."""


class Deferred:
    """An error to raise after the transaction commits (an expired hold is voided, then refused)."""

    def __init__(self, error: WalletError) -> None:
        self.error = error


_ENTRY_COLS = 'id, account, kind, amount, "key", reason, ref, meta, created_at'
_HOLD_COLS = 'id, account, amount, "key", status, captured, created_at, expires_at'

_INS_ENTRY = (
    'INSERT INTO wallet_entries (account, kind, amount, "key", reason, ref, meta, created_at) '
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INS_ENTRY_NEW = _INS_ENTRY + ' ON CONFLICT (account, "key") DO NOTHING RETURNING id'
_INS_ENTRY_PLAIN = _INS_ENTRY + " RETURNING id"
_ENTRY_BY_KEY = f'SELECT {_ENTRY_COLS} FROM wallet_entries WHERE account = ? AND "key" = ?'
_HOLD_KEY_USED = 'SELECT id FROM wallet_holds WHERE account = ? AND "key" = ?'
# No row back: the credit would take the total past MAX_TOTAL (the caller rolls back).
_CREDIT_ACCOUNT = (
    "INSERT INTO wallet_accounts (id, total, held) VALUES (?, ?, 0) "
    "ON CONFLICT (id) DO UPDATE SET total = wallet_accounts.total + excluded.total "
    "WHERE wallet_accounts.total <= ? - excluded.total RETURNING total"
)
_TOTAL = "SELECT total FROM wallet_accounts WHERE id = ?"
_DEBIT_ACCOUNT = "UPDATE wallet_accounts SET total = total - ? WHERE id = ? AND total - held >= ?"
_RESERVE = "UPDATE wallet_accounts SET held = held + ? WHERE id = ? AND total - held >= ?"
_RELEASE = "UPDATE wallet_accounts SET held = held - ?, total = total - ? WHERE id = ?"
_AVAILABLE = "SELECT total - held FROM wallet_accounts WHERE id = ?"
# A new hold, unless its key is taken on the account (by a hold: a replay; by a ledger entry).
_INS_HOLD = (
    'INSERT INTO wallet_holds (account, amount, "key", status, captured, created_at, expires_at) '
    "SELECT ?1, ?2, ?3, ?4, 0, ?5, ?6 WHERE NOT EXISTS "
    '(SELECT 1 FROM wallet_entries WHERE account = ?1 AND "key" = ?3) '
    'ON CONFLICT (account, "key") DO NOTHING RETURNING id'
)
# A hold with the id of its capture entry (found through the capture's derived key).
_HOLD_SELECT = (
    "SELECT h.id, h.account, h.amount, h.key, h.status, h.captured, h.created_at, "
    "h.expires_at, e.id FROM wallet_holds AS h LEFT OUTER JOIN wallet_entries AS e "
    "ON e.account = h.account AND e.key = ? || h.key"
)
_HOLD_BY_KEY = _HOLD_SELECT + " WHERE h.account = ? AND h.key = ?"
_HOLD_BY_ID = _HOLD_SELECT + " WHERE h.id = ?"
_CAPTURE_HOLD = (
    f"UPDATE wallet_holds SET status = '{CAPTURED}', captured = ?, closed_at = ? "
    f"WHERE id = ? AND status = '{HELD}' AND expires_at > ? AND amount >= ? "
    'RETURNING account, amount, "key"'
)
_CLOSE_HOLD = (
    f"UPDATE wallet_holds SET status = CASE WHEN expires_at <= ? THEN '{EXPIRED}' "
    f"ELSE '{VOIDED}' END, closed_at = ?, reason = ? WHERE id = ? AND status = '{HELD}' "
    f"RETURNING {_HOLD_COLS}"
)
_EXPIRE_DUE = (
    f"UPDATE wallet_holds SET status = '{EXPIRED}', closed_at = ?, reason = 'expired' "
    f"WHERE status = '{HELD}' AND expires_at <= ? RETURNING account, amount"
)


def _ts(value: datetime) -> str:
    """A timestamp as SQLAlchemy's UtcDateTime stores it on SQLite (naive UTC, microseconds)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the wallet; use timezone-aware UTC")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _meta_text(meta: dict[str, Any]) -> str | None:
    return json.dumps(meta) if meta else None


def _row(cur: sqlite3.Cursor, sql: str, params: tuple[Any, ...]) -> Any:
    """The first row of a statement, run to completion (so no statement stays open)."""
    rows = cur.execute(sql, params).fetchall()
    return rows[0] if rows else None


def _entry(r: Any) -> Entry:
    eid, account, kind, amount, key, reason, ref, meta, created_at = r
    return Entry(
        id=str(eid),
        account=account,
        kind=kind,
        amount=amount,
        key=key,
        reason=reason,
        created_at=_dt(created_at),
        ref=ref,
        meta=dict(json.loads(meta) or {}) if meta is not None else {},
    )


def _hold(r: Any) -> Hold:
    hid, account, amount, key, status, captured, created_at, expires_at, *rest = r
    entry_id = rest[0] if rest else None
    return Hold(
        id=str(hid),
        account=account,
        amount=amount,
        key=key,
        status=status,
        created_at=_dt(created_at),
        expires_at=_dt(expires_at),
        captured=captured,
        entry_id=None if entry_id is None else str(entry_id),
    )


def _insufficient(cur: sqlite3.Cursor, account: str, amount: int) -> NoReturn:
    row = _row(cur, _AVAILABLE, (account,))
    raise InsufficientCredits(account, amount, int(row[0] if row and row[0] else 0))


def entry_tx(
    kind: str,
    account: str,
    amount: int,
    key: str,
    reason: str,
    ref: str | None,
    meta: dict[str, Any],
) -> Callable[[sqlite3.Cursor], Entry]:
    """A credit or debit of `amount` (> 0), idempotent on (account, key)."""
    signed = amount if kind == CREDIT else -amount

    def tx(cur: sqlite3.Cursor) -> Entry:
        now = datetime.now(UTC)
        params = (account, kind, signed, key, reason, ref, _meta_text(meta), _ts(now))
        new = _row(cur, _INS_ENTRY_NEW, params)
        if new is None:  # a replay: the first result stands if it is the same operation
            first = _entry(_row(cur, _ENTRY_BY_KEY, (account, key)))
            if first.kind != kind or first.amount != signed:
                raise IdempotencyConflict(account, key, first)
            return first
        if _row(cur, _HOLD_KEY_USED, (account, key)) is not None:
            raise IdempotencyConflict(account, key)  # rolls the new entry back
        if kind == CREDIT:
            if _row(cur, _CREDIT_ACCOUNT, (account, amount, MAX_TOTAL)) is None:
                total = _row(cur, _TOTAL, (account,))
                raise BalanceLimitExceeded(account, amount, total and total[0])  # rolls back
        elif cur.execute(_DEBIT_ACCOUNT, (amount, account, amount)).rowcount != 1:
            _insufficient(cur, account, amount)
        return Entry(
            id=str(new[0]),
            account=account,
            kind=kind,
            amount=signed,
            key=key,
            reason=reason,
            created_at=now,
            ref=ref,
            meta=meta,
        )

    return tx


def hold_tx(account: str, amount: int, key: str, span: timedelta) -> Callable[..., Hold]:
    """Reserve `amount` until now + span, idempotent on (account, key)."""

    def tx(cur: sqlite3.Cursor) -> Hold:
        now = datetime.now(UTC)
        expires = now + span
        new = _row(cur, _INS_HOLD, (account, amount, key, HELD, _ts(now), _ts(expires)))
        if new is None:  # the key is taken: a replay returns the hold as it stands now
            found = _row(cur, _HOLD_BY_KEY, (CAPTURE_KEY_PREFIX, account, key))
            if found is None:  # a ledger entry of the account uses the key
                raise IdempotencyConflict(account, key)
            first = _hold(found)
            if first.amount != amount:
                raise IdempotencyConflict(account, key, first)
            return first
        if cur.execute(_RESERVE, (amount, account, amount)).rowcount != 1:
            _insufficient(cur, account, amount)  # rolls the new hold back
        return Hold(str(new[0]), account, amount, key, HELD, now, expires)

    return tx


def capture_tx(
    hid: int, amount: int, reason: str, meta: dict[str, Any]
) -> Callable[[sqlite3.Cursor], Entry | Deferred]:
    """Spend `amount` of a held, unexpired hold, release the rest, and write the ledger line."""

    def tx(cur: sqlite3.Cursor) -> Entry | Deferred:
        now = datetime.now(UTC)
        stamp = _ts(now)
        done = _row(cur, _CAPTURE_HOLD, (amount, stamp, hid, stamp, amount))
        if done is None:
            return _refuse_capture(cur, hid, amount, now)
        account, held, hkey = done
        cur.execute(_RELEASE, (held, amount, account))
        key = CAPTURE_KEY_PREFIX + hkey
        text = reason or "capture"
        params = (account, CAPTURE, -amount, key, text, str(hid), _meta_text(meta), stamp)
        try:
            new = _row(cur, _INS_ENTRY_PLAIN, params)
        except sqlite3.IntegrityError as exc:  # the account's ledger already uses capture:KEY
            raise IdempotencyConflict(account, key) from exc
        return Entry(
            id=str(new[0]),
            account=account,
            kind=CAPTURE,
            amount=-amount,
            key=key,
            reason=text,
            created_at=now,
            ref=str(hid),
            meta=meta,
        )

    return tx


def _refuse_capture(cur: sqlite3.Cursor, hid: int, amount: int, now: datetime) -> Entry | Deferred:
    """Why the capture did not happen: replay, closed, expired, or too large."""
    found = _row(cur, _HOLD_BY_ID, (CAPTURE_KEY_PREFIX, hid))
    if found is None:
        raise HoldNotFound(f"no hold {hid}")
    h = _hold(found)
    if h.status == CAPTURED:
        return _entry(_row(cur, _ENTRY_BY_KEY, (h.account, CAPTURE_KEY_PREFIX + h.key)))
    if h.status != HELD:
        raise HoldNotActive(h.id, h.status)
    if h.expires_at <= now:
        _close(cur, hid, now, "expired at capture")
        return Deferred(HoldNotActive(h.id, EXPIRED))
    if amount > h.amount:
        raise InvalidAmount(f"capture of {amount} exceeds hold {h.id} of {h.amount}")
    raise Retry


def _close(cur: sqlite3.Cursor, hid: int, now: datetime, reason: str) -> Hold | None:
    """Release a held hold (voided, or expired if its time is up); None if not held."""
    stamp = _ts(now)
    row = _row(cur, _CLOSE_HOLD, (stamp, stamp, reason, hid))
    if row is None:
        return None
    h = _hold(row)
    cur.execute(_RELEASE, (h.amount, 0, h.account))
    return h


def void_tx(hid: int, reason: str) -> Callable[[sqlite3.Cursor], Hold | Deferred]:
    """Release the whole hold; voiding a voided hold returns it."""

    def tx(cur: sqlite3.Cursor) -> Hold | Deferred:
        h = _close(cur, hid, datetime.now(UTC), reason or "void")
        if h is None:
            found = _row(cur, _HOLD_BY_ID, (CAPTURE_KEY_PREFIX, hid))
            if found is None:
                raise HoldNotFound(f"no hold {hid}")
            h = _hold(found)
            if h.status == VOIDED:
                return h
            raise HoldNotActive(h.id, h.status)
        if h.status == EXPIRED:
            return Deferred(HoldNotActive(h.id, EXPIRED))
        return h

    return tx


def sweep_tx(at: datetime) -> Callable[[sqlite3.Cursor], int]:
    """Expire every hold due at `at` and release what they held, account by account."""
    stamp = _ts(at)

    def tx(cur: sqlite3.Cursor) -> int:
        rows = cur.execute(_EXPIRE_DUE, (stamp, stamp)).fetchall()
        per_account: dict[str, int] = {}
        for account, amount in rows:
            per_account[account] = per_account.get(account, 0) + amount
        if per_account:
            cur.executemany(
                _RELEASE, [(held, 0, acct) for acct, held in sorted(per_account.items())]
            )
        return len(rows)

    return tx
