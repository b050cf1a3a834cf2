"""The wallet on SQL: SQLite (embedded default) or PostgreSQL, through SQLAlchemy 2 async.

Every money call is one short transaction of conditional statements, so the database itself
enforces the rules without row locks that SQLite lacks:
- a hold succeeds only through `UPDATE accounts SET held = held + :a WHERE total - held >= :a`,
  a debit through the same test on `total`; a zero row count is a refusal;
- a hold is captured or voided only through `UPDATE holds ... WHERE status = 'held'`, so it
  moves exactly once, and a capture also requires `expires_at > now`;
- idempotency keys are UNIQUE per account: `INSERT ... ON CONFLICT (account, key) DO NOTHING`
  finds a replay, which returns the first result and changes nothing if it is the same
  operation (kind and amount) and raises IdempotencyConflict if not. A hold's key and an entry's
  key share one namespace per account: a new row whose key the other table already holds for
  the account is refused (the transaction rolls back).
The ledger row and the balance change are written in the same transaction. On a SQLite file,
a process's writes run on one writer thread that group-commits whatever is waiting (sqlite_writer),
each transaction opened with BEGIN IMMEDIATE; other processes wait on busy_timeout, and a
leftover "database is locked" is retried. On PostgreSQL a hold and a capture are one statement
each (sql_pg), tried first alone in autocommit on the pool's raw asyncpg connection (one round
trip); anything but a plain success changed nothing and reruns as the transaction. Every write
transaction is written as plain blocking Core code, run through `AsyncConnection.run_sync`
(PostgreSQL, SQLite :memory:), and, for a SQLite file, once more as the same statements in
plain sqlite3 with fixed SQL text (sql_lite), run on the writer thread.
Reads go through SQLAlchemy on every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.storage.sql_engine import (
    create_engine,
    is_sqlite,
    migrate,
    retrying,
    sqlite_file,
    writer,
)
from billing.storage.sqlite_writer import SqliteWriter
from billing.wallet import sql_lite, sql_pg
from billing.wallet.base import (
    CAPTURE,
    CAPTURED,
    CREDIT,
    DEBIT,
    EXPIRED,
    HELD,
    MAX_TOTAL,
    VOIDED,
    Balance,
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
from billing.wallet.sql_schema import accounts, entries, holds
from billing.wallet.sql_statements import (
    HOLD_COLS,
    LIVE,
    Statements,
    entry_from_row,
    hold_from_row,
    parse_id,
)

T = TypeVar("T")

MAX_AMOUNT = MAX_TOTAL  # no single amount exceeds what an account may hold
CAPTURE_KEY_PREFIX = sql_lite.CAPTURE_KEY_PREFIX
_Retry = sql_lite.Retry
_Deferred = sql_lite.Deferred


class _CaptureKeyUsed(Exception):
    """PostgreSQL refused a capture's ledger key (the transaction is aborted; name it after)."""


def _check_amount(amount: int, *, zero_ok: bool = False) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"amount must be an integer number of millicredits, got {amount!r}")
    if amount < 0 or (amount == 0 and not zero_ok) or amount > MAX_AMOUNT:
        raise InvalidAmount(f"amount out of range: {amount}")


class SqlWallet:
    """Wallet protocol on SQLite or PostgreSQL (see module docstring for how it stays exact)."""

    def __init__(self, engine: AsyncEngine, sqlite_path: tuple[str, str] | None = None) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._sqlite = is_sqlite(engine)
        self._sqlite_writer = (
            SqliteWriter.shared(*sqlite_path, name="sqlite-writer")
            if sqlite_path is not None
            else None
        )
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self._sqlite else None
        self._sql = Statements(self._sqlite)
        # PostgreSQL: the fast path's own connections, half the pool's size (4 by default).
        # Few is better: calls that find them all busy go together as one statement.
        self._fast = (
            None
            if self._sqlite
            else sql_pg.FastLane(
                engine,
                max(2, engine.pool.size() // 2),  # type: ignore[attr-defined]
                CAPTURE_KEY_PREFIX,
            )
        )

    @classmethod
    async def open(cls, url: str) -> SqlWallet:
        """Open (creating if needed) and migrate the database at `url`, then return the wallet."""
        engine = create_engine(url)
        try:
            await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, sqlite_file(url) if is_sqlite(engine) else None)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    # -- transactions ----------------------------------------------------------------------

    async def _write(self, fn: Callable[[Connection], T], lite: Callable[[sqlite3.Cursor], T]) -> T:
        """Run one write transaction, retried whole on lock/serialization failures.

        SQLite files: `lite`, the same transaction in plain sqlite3 (sql_lite), runs on the
        wallet's writer thread, group-committed with whatever else is waiting (see sqlite_writer).
        PostgreSQL and SQLite :memory:: `fn`, plain blocking Core code, runs through
        `AsyncConnection.run_sync`, each statement awaited on the async driver.
        """
        for _ in range(20):
            try:
                if self._sqlite_writer is not None:
                    return await self._sqlite_writer.run(lite)
                return await retrying(lambda: self._write_async(fn))
            except _Retry:
                await asyncio.sleep(0)
        raise WalletError("the wallet could not settle a concurrent change; try again")

    async def _write_async(self, fn: Callable[[Connection], T]) -> T:
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self._writer.begin() as conn:
            return await conn.run_sync(fn)

    async def _read(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async def once() -> T:
            async with self._engine.connect() as conn:
                return await fn(conn)

        return await retrying(once)

    def _insufficient(self, conn: Connection, account: str, amount: int) -> NoReturn:
        available = conn.execute(self._sql.available, {"p_acct": account}).scalar()
        raise InsufficientCredits(account, amount, int(available or 0))

    # -- money -----------------------------------------------------------------------------

    async def credit(
        self,
        account: str,
        amount: int,
        key: str,
        reason: str,
        *,
        ref: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        if type(amount) is int and amount > MAX_TOTAL:
            raise BalanceLimitExceeded(account, amount)
        _check_amount(amount)
        return await self._entry_op(CREDIT, account, amount, key, reason, ref, meta)

    async def debit(
        self,
        account: str,
        amount: int,
        key: str,
        reason: str,
        *,
        ref: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        _check_amount(amount)
        return await self._entry_op(DEBIT, account, amount, key, reason, ref, meta)

    async def _entry_op(
        self,
        kind: str,
        account: str,
        amount: int,
        key: str,
        reason: str,
        ref: str | None,
        meta: dict[str, Any] | None,
    ) -> Entry:
        signed = amount if kind == CREDIT else -amount
        meta = dict(meta or {})

        def tx(conn: Connection) -> Entry:
            now = datetime.now(UTC)
            row = {
                "account": account,
                "kind": kind,
                "amount": signed,
                "key": key,
                "reason": reason,
                "ref": ref,
                "meta": meta or None,
                "created_at": now,
            }
            new_id = (conn.execute(self._sql.ins_entry, row)).scalar()
            params = {"p_acct": account, "p_amt": amount, "p_key": key}
            if new_id is None:  # a replay: the first result stands if it is the same operation
                first = entry_from_row((conn.execute(self._sql.entry_by_key, params)).one())
                if first.kind != kind or first.amount != signed:
                    raise IdempotencyConflict(account, key, first)
                return first
            if conn.execute(self._sql.hold_key_used, params).first() is not None:
                raise IdempotencyConflict(account, key)  # rolls the new entry back
            if kind == CREDIT:
                if conn.execute(self._sql.credit_account, params).first() is None:
                    total = conn.execute(self._sql.balance, params).first()
                    raise BalanceLimitExceeded(account, amount, total and total.total)
            elif (conn.execute(self._sql.debit_account, params)).rowcount != 1:
                self._insufficient(conn, account, amount)
            return Entry(
                id=str(new_id),
                account=account,
                kind=kind,
                amount=signed,
                key=key,
                reason=reason,
                created_at=now,
                ref=ref,
                meta=meta,
            )

        lite = sql_lite.entry_tx(kind, account, amount, key, reason, ref, meta)
        return await self._write(tx, lite)

    async def hold(self, account: str, amount: int, key: str, ttl: float) -> Hold:
        _check_amount(amount)
        if not ttl > 0:
            raise ValueError(f"hold ttl must be positive seconds, got {ttl!r}")
        span = timedelta(seconds=ttl)
        if self._fast is not None:  # PostgreSQL: one autocommit statement when it simply succeeds
            now = datetime.now(UTC)
            with contextlib.suppress(sql_pg.KeyTaken):
                row = await self._fast.hold(account, amount, key, now, now + span)
                if row is not sql_pg.FALLBACK and row is not None:
                    return Hold(str(row["id"]), account, amount, key, HELD, now, now + span)

        def tx(conn: Connection) -> Hold:
            now = datetime.now(UTC)
            if self._sql.pg_hold is not None:
                params = {
                    "p_acct": account,
                    "p_amt": amount,
                    "p_key": key,
                    "p_now": now,
                    "p_exp": now + span,
                }
                # The account's row first, as the fast statements take it (reserve, then
                # insert): a hold racing a replay of itself on the other path cannot deadlock.
                conn.execute(self._sql.lock_account, {"p_acct": account})
                new_id, ok = conn.execute(self._sql.pg_hold, params).one()
                if new_id is None:
                    return self._hold_replay(conn, account, amount, key)
                if ok is None:
                    self._insufficient(conn, account, amount)
                self._check_entry_key(conn, account, key)
                return Hold(str(new_id), account, amount, key, HELD, now, now + span)
            row = {
                "account": account,
                "amount": amount,
                "key": key,
                "status": HELD,
                "captured": 0,
                "created_at": now,
                "expires_at": now + span,
            }
            new_id = (conn.execute(self._sql.ins_hold, row)).scalar()
            if new_id is None:  # a replay: the hold as it stands now
                return self._hold_replay(conn, account, amount, key)
            reserved = conn.execute(self._sql.reserve, {"p_acct": account, "p_amt": amount})
            if reserved.rowcount != 1:
                self._insufficient(conn, account, amount)
            self._check_entry_key(conn, account, key)
            return Hold(
                id=str(new_id),
                account=account,
                amount=amount,
                key=key,
                status=HELD,
                created_at=now,
                expires_at=now + span,
            )

        return await self._write(tx, sql_lite.hold_tx(account, amount, key, span))

    def _hold_replay(self, conn: Connection, account: str, amount: int, key: str) -> Hold:
        """The hold the key already names on this account, if it was for the same amount."""
        first = hold_from_row(
            (conn.execute(self._sql.hold_by_key, {"p_acct": account, "p_key": key})).one()
        )
        if first.amount != amount:
            raise IdempotencyConflict(account, key, first)
        return first

    def _check_entry_key(self, conn: Connection, account: str, key: str) -> None:
        """A new hold may not take a key a ledger entry of the account already uses."""
        if conn.execute(self._sql.entry_key_used, {"p_acct": account, "p_key": key}).first():
            raise IdempotencyConflict(account, key)  # rolls the new hold back

    async def capture(
        self,
        hold_id: str,
        amount: int,
        *,
        reason: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        _check_amount(amount, zero_ok=True)
        hid = parse_id(hold_id)
        if hid is None:
            raise HoldNotFound(f"no hold {hold_id!r}")
        meta = dict(meta or {})
        if self._fast is not None:  # PostgreSQL: one autocommit statement when it simply succeeds
            now = datetime.now(UTC)
            try:
                got = await self._fast.capture(
                    hid, amount, now, reason or "capture", json.dumps(meta) if meta else None
                )
            except sql_pg.KeyTaken as exc:
                h = await self.get_hold(hold_id)
                raise IdempotencyConflict(h.account, CAPTURE_KEY_PREFIX + h.key) from exc
            if got is not sql_pg.FALLBACK and got is not None:
                return Entry(
                    id=str(got["id"]),
                    account=got["account"],
                    kind=CAPTURE,
                    amount=-amount,
                    key=got["key"],
                    reason=reason or "capture",
                    created_at=now,
                    ref=str(hid),
                    meta=meta,
                )

        def tx(conn: Connection) -> Entry | _Deferred:
            now = datetime.now(UTC)
            if self._sql.pg_capture is not None:
                params = {
                    "p_id": hid,
                    "p_now": now,
                    "p_amt": amount,
                    "p_reason": reason or "capture",
                    "p_ref": str(hid),
                    "p_meta": meta or None,
                }
                try:
                    got = conn.execute(self._sql.pg_capture, params).first()
                except IntegrityError as exc:  # the account's ledger already uses capture:KEY
                    raise _CaptureKeyUsed from exc  # named after the rollback
                if got is None:
                    return self._refuse_capture(conn, hid, amount, now)
                return Entry(
                    id=str(got.id),
                    account=got.account,
                    kind=CAPTURE,
                    amount=-amount,
                    key=CAPTURE_KEY_PREFIX + got.key,
                    reason=reason or "capture",
                    created_at=now,
                    ref=str(hid),
                    meta=meta,
                )
            done = (
                conn.execute(self._sql.capture_hold, {"p_id": hid, "p_now": now, "p_amt": amount})
            ).first()
            if done is None:
                return self._refuse_capture(conn, hid, amount, now)
            account, held, hkey = done
            conn.execute(self._sql.release, {"p_acct": account, "p_held": held, "p_spent": amount})
            row = {
                "account": account,
                "kind": CAPTURE,
                "amount": -amount,
                "key": CAPTURE_KEY_PREFIX + hkey,
                "reason": reason or "capture",
                "ref": str(hid),
                "meta": meta or None,
                "created_at": now,
            }
            try:
                new_id = (conn.execute(self._sql.ins_entry_plain, row)).scalar_one()
            except IntegrityError as exc:
                raise IdempotencyConflict(account, row["key"]) from exc
            return Entry(
                id=str(new_id),
                account=account,
                kind=CAPTURE,
                amount=-amount,
                key=row["key"],
                reason=row["reason"],
                created_at=now,
                ref=str(hid),
                meta=meta,
            )

        try:
            result = await self._write(tx, sql_lite.capture_tx(hid, amount, reason, meta))
        except _CaptureKeyUsed as exc:
            h = await self.get_hold(hold_id)
            raise IdempotencyConflict(h.account, CAPTURE_KEY_PREFIX + h.key) from exc
        if isinstance(result, _Deferred):
            raise result.error
        return result

    def _refuse_capture(
        self, conn: Connection, hid: int, amount: int, now: datetime
    ) -> Entry | _Deferred:
        """Why the capture did not happen: replay, closed, expired, or too large."""
        found = (conn.execute(self._sql.hold_by_id, {"p_id": hid})).first()
        if found is None:
            raise HoldNotFound(f"no hold {hid}")
        h = hold_from_row(found)
        if h.status == CAPTURED:
            params = {"p_acct": h.account, "p_key": CAPTURE_KEY_PREFIX + h.key}
            return entry_from_row((conn.execute(self._sql.entry_by_key, params)).one())
        if h.status != HELD:
            raise HoldNotActive(h.id, h.status)
        if h.expires_at <= now:
            self._close(conn, hid, now, "expired at capture")
            return _Deferred(HoldNotActive(h.id, EXPIRED))
        if amount > h.amount:
            raise InvalidAmount(f"capture of {amount} exceeds hold {h.id} of {h.amount}")
        raise _Retry

    def _close(self, conn: Connection, hid: int, now: datetime, reason: str) -> Hold | None:
        """Release a held hold (voided, or expired if its time is up); None if not held."""
        params = {"p_id": hid, "p_now": now, "p_reason": reason}
        row = (conn.execute(self._sql.close_hold, params)).first()
        if row is None:
            return None
        h = hold_from_row(row)
        conn.execute(self._sql.release, {"p_acct": h.account, "p_held": h.amount, "p_spent": 0})
        return h

    async def void(self, hold_id: str, reason: str = "") -> Hold:
        hid = parse_id(hold_id)
        if hid is None:
            raise HoldNotFound(f"no hold {hold_id!r}")

        def tx(conn: Connection) -> Hold | _Deferred:
            now = datetime.now(UTC)
            h = self._close(conn, hid, now, reason or "void")
            if h is None:
                found = (conn.execute(self._sql.hold_by_id, {"p_id": hid})).first()
                if found is None:
                    raise HoldNotFound(f"no hold {hid}")
                h = hold_from_row(found)
                if h.status == VOIDED:
                    return h
                raise HoldNotActive(h.id, h.status)
            if h.status == EXPIRED:
                return _Deferred(HoldNotActive(h.id, EXPIRED))
            return h

        result = await self._write(tx, sql_lite.void_tx(hid, reason))
        if isinstance(result, _Deferred):
            raise result.error
        return result

    async def sweep(self, now: datetime | None = None) -> int:
        at = now or datetime.now(UTC)

        def tx(conn: Connection) -> int:
            rows = (conn.execute(self._sql.expire_due, {"p_now": at})).all()
            per_account: dict[str, int] = {}
            for account, amount in rows:
                per_account[account] = per_account.get(account, 0) + amount
            if per_account:
                conn.execute(
                    self._sql.release,
                    [
                        {"p_acct": acct, "p_held": held, "p_spent": 0}
                        for acct, held in sorted(per_account.items())
                    ],
                )
            return len(rows)

        return await self._write(tx, sql_lite.sweep_tx(at))

    # -- reading ---------------------------------------------------------------------------

    async def get_hold(self, hold_id: str) -> Hold:
        hid = parse_id(hold_id)
        if hid is None:
            raise HoldNotFound(f"no hold {hold_id!r}")

        async def q(conn: AsyncConnection) -> Row[Any] | None:
            return (await conn.execute(self._sql.hold_by_id, {"p_id": hid})).first()

        row = await self._read(q)
        if row is None:
            raise HoldNotFound(f"no hold {hold_id!r}")
        return hold_from_row(row)

    async def balance(self, account: str) -> Balance:
        async def q(conn: AsyncConnection) -> Row[Any] | None:
            return (await conn.execute(self._sql.balance, {"p_acct": account})).first()

        row = await self._read(q)
        if row is None:
            return Balance(account, 0, 0)
        return Balance(account, int(row.total), int(row.held))

    async def entries(
        self, account: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Entry]:
        stmt = sa.select(entries).where(entries.c.account == account)
        if before is not None:
            stmt = stmt.where(entries.c.created_at < before)
        stmt = stmt.order_by(entries.c.id.desc()).limit(max(0, int(limit)))

        async def q(conn: AsyncConnection) -> Sequence[Row[Any]]:
            return (await conn.execute(stmt)).all()

        return [entry_from_row(r) for r in await self._read(q)]

    async def get_entry(self, entry_id: str) -> Entry | None:
        eid = parse_id(entry_id)
        if eid is None:
            return None

        async def q(conn: AsyncConnection) -> Row[Any] | None:
            return (await conn.execute(self._sql.entry_by_id, {"p_id": eid})).first()

        row = await self._read(q)
        return None if row is None else entry_from_row(row)

    async def accounts(self) -> list[str]:
        async def q(conn: AsyncConnection) -> list[str]:
            return list(
                (await conn.execute(sa.select(accounts.c.id).order_by(accounts.c.id))).scalars()
            )

        return await self._read(q)

    async def open_holds(self) -> list[Hold]:
        stmt = sa.select(*HOLD_COLS).where(LIVE).order_by(holds.c.id)

        async def q(conn: AsyncConnection) -> Sequence[Row[Any]]:
            return (await conn.execute(stmt)).all()

        return [hold_from_row(r) for r in await self._read(q)]

    async def close(self) -> None:
        """Close what the wallet opened; closing again does nothing (the SQLite writer may be
        shared with the bot's store, which must not lose it to a second close)."""
        fast, self._fast = self._fast, None
        if fast is not None:
            await fast.close()
        writer, self._sqlite_writer = self._sqlite_writer, None
        if writer is not None:
            await writer.close()
        await self._engine.dispose()
