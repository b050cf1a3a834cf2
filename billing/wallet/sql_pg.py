"""PostgreSQL: a hold and a capture each in one statement (data-modifying CTEs).

Same rules as the portable statements in sql_wallet, but one round trip instead of two or
three inside the transaction, which shortens how long the account's row stays locked: that
row is what concurrent spenders of one account queue on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

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


# --- the fast path: one autocommit statement per call, straight on asyncpg --------------------
#
# A hold and a capture that succeed need no transaction around them: each is one statement,
# and a single statement is atomic on its own. Sent as plain asyncpg prepared statements (no
# BEGIN/COMMIT round trips, no SQLAlchemy per call) they cost one round trip, like a bare UPDATE.
# Whenever the answer is not a plain success (a replay, a refusal, a key taken, a lock error),
# the statement has changed nothing and the caller runs the transactional path above, which
# finds out why and answers exactly as before.

FAST_HOLD = f"""
WITH upd AS (
    UPDATE {accounts.name} SET held = held + $2::bigint
    WHERE id = $1::varchar AND total - held >= $2::bigint
      AND NOT EXISTS (
          SELECT 1 FROM {entries.name} e WHERE e.account = $1::varchar AND e.key = $3::varchar
      )
    RETURNING id
)
INSERT INTO {holds.name} (account, amount, key, status, captured, created_at, expires_at)
SELECT upd.id, $2::bigint, $3::varchar, '{HELD}', 0, $4::timestamptz, $5::timestamptz FROM upd
RETURNING id
"""
"""Reserve the amount and insert the hold, or change nothing.

No row: the reservation was refused (available credit does not cover it, or no such
account) or a ledger entry of the account already uses the key. A hold that already uses the
key raises a unique violation (KeyTaken), which aborts the statement and so undoes the
reservation. Every one of those changed nothing, and the caller takes the transactional path,
which tells a replay from a conflict or a refusal. (A plain INSERT is cheaper than ON
CONFLICT's speculative insertion; a replay is the rare case.)
"""


def fast_capture(capture_prefix: str) -> str:
    """Close a live, unexpired, large-enough hold, move the money, write the ledger line.

    One row (entry id, account, ledger key) on success; no row when the hold could not be
    captured; a unique violation when the account's ledger already uses the capture's key.
    """
    prefix = capture_prefix.replace("'", "''")
    return f"""
WITH h AS (
    UPDATE {holds.name}
    SET status = '{CAPTURED}', captured = $2::bigint, closed_at = $3::timestamptz
    WHERE id = $1::bigint AND status = '{HELD}' AND expires_at > $3::timestamptz
      AND amount >= $2::bigint
    RETURNING account, amount, key
), moved AS (
    UPDATE {accounts.name} a SET held = a.held - h.amount, total = a.total - $2::bigint
    FROM h WHERE a.id = h.account
)
INSERT INTO {entries.name} (account, kind, amount, key, reason, ref, meta, created_at)
SELECT h.account, '{CAPTURE}', -$2::bigint, '{prefix}' || h.key, $4::text, $5::varchar,
       $6::json, $3::timestamptz
FROM h
RETURNING id, account, key
"""


class KeyTaken(Exception):
    """The statement hit a unique key (a capture: its ledger key is already used)."""


FALLBACK: Any = object()  # the fast statement could not answer; take the transactional path


class FastLane:
    """A few asyncpg connections of the wallet's own, for the one-statement fast path only.

    They never begin a transaction, so a connection needs no reset between callers: it goes
    back to the idle list as it is (a pool's release would send a reset query, one more round
    trip per wallet call). SQLAlchemy's pool, with its checkout, greenlet and rollback-on-return,
    stays for the transactional path. A broken or interrupted connection is dropped, never
    reused; at most `size` are open, and callers beyond that queue for one.
    """

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        for own in (
            "async_creator_fn",
            "prepared_statement_cache_size",
            "prepared_statement_name_func",
        ):
            kwargs.pop(own, None)  # SQLAlchemy's own options, not asyncpg's
        self._args, self._kwargs = args, kwargs
        self.size = max(1, size)
        self._idle: list[asyncpg.Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self._closed = False

    async def _acquire(self) -> asyncpg.Connection:
        while True:
            if self._idle:
                return self._idle.pop()
            if self._open < self.size:
                self._open += 1
                try:
                    return await asyncpg.connect(*self._args, **self._kwargs)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():  # answered as we were cancelled
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed)  # pass the connection on
                    else:
                        self._wake()  # pass the room to open one on
                raise
            if conn is not None:
                return conn
            # None: a connection was dropped, so there is room to open one; loop round.

    def _wake(self) -> None:
        """Tell the first live waiter there is room to open a connection."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: asyncpg.Connection) -> None:
        if self._closed:
            self._drop(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        self._open -= 1
        conn.terminate()
        self._wake()

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """Run one fast statement; the first row, None, or FALLBACK (see below).

        FALLBACK when the server refused the statement (it then changed nothing) or the
        connection failed (the caller's transactional retry is idempotent: the hold's key or
        the hold's status tells it what already happened). A unique violation raises KeyTaken:
        for a capture it means the ledger already uses the capture's key.
        """
        if self._closed:
            return FALLBACK
        try:
            conn = await self._acquire()
        except Exception:  # cannot connect now: the transactional path will say why
            return FALLBACK
        try:
            row = await conn.fetchrow(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            self._release(conn)
            raise KeyTaken from exc
        except asyncpg.PostgresError:
            self._release(conn)  # an error of the statement; the connection is fine
            return FALLBACK
        except BaseException as exc:  # broken, or interrupted mid-statement: never reuse it
            self._drop(conn)
            if isinstance(exc, Exception):
                return FALLBACK
            raise
        self._release(conn)
        return row

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the wallet is closed"))
        self._waiters.clear()
