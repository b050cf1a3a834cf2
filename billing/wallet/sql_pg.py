"""PostgreSQL: a hold and a capture each in one statement (data-modifying CTEs).

Same rules as the portable statements in sql_wallet, but one round trip instead of two or
three inside the transaction, which shortens how long the account's row stays locked: that
row is what concurrent spenders of one account queue on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import forking
from billing.storage.schema import UtcDateTime
from billing.wallet.base import CAPTURE, CAPTURED, HELD
from billing.wallet.sql_schema import accounts, entries, holds

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
    RETURNING id, account, amount, key
), moved AS (
    UPDATE {accounts.name} a SET held = a.held - h.amount, total = a.total - $2::bigint
    FROM h WHERE a.id = h.account
)
INSERT INTO {entries.name} (account, kind, amount, key, reason, ref, meta, created_at)
SELECT h.account, '{CAPTURE}', -$2::bigint, '{prefix}' || h.key, $4::text, h.id::text,
       $5::json, $3::timestamptz
FROM h
RETURNING id, account, key
"""


def batch_hold_statement() -> str:
    """Many holds in one statement: the fast path when callers queue for a connection.

    Per account, the batch's holds are reserved together or not at all (a refusal sends each of
    them down the transactional path, which answers it alone); a request whose key a ledger
    entry uses is left out. Accounts are locked in id order, byte by byte (COLLATE "C", the
    order Python's sorted() gives the sweeper), so batches and sweeps never deadlock.
    Returns (id, account, key) per inserted hold; a hold key already used raises a unique
    violation and the whole statement changes nothing.

    Every table is reached through an index whatever the row estimates (a prepared statement
    soon runs a generic plan, which cannot know how many requests the arrays hold): the ledger
    key check is a LATERAL probe, the accounts are found by `id = ANY(...)`.
    """
    return f"""
WITH req AS (
    SELECT * FROM unnest($1::varchar[], $2::bigint[], $3::varchar[], $4::timestamptz[],
                         $5::timestamptz[]) AS r(account, amount, key, created_at, expires_at)
), ok AS (
    SELECT r.* FROM req r
    LEFT JOIN LATERAL (
        SELECT 1 AS taken FROM {entries.name} e
        WHERE e.account = r.account AND e.key = r.key LIMIT 1
    ) t ON true
    WHERE t.taken IS NULL
), want AS (
    SELECT account, sum(amount)::bigint AS amount FROM ok GROUP BY account
), locked AS (
    SELECT a.id FROM {accounts.name} a WHERE a.id = ANY(ARRAY(SELECT account FROM want))
    ORDER BY a.id COLLATE "C" FOR UPDATE
), upd AS (
    UPDATE {accounts.name} a SET held = a.held + w.amount
    FROM want w
    WHERE a.id = ANY(ARRAY(SELECT id FROM locked)) AND w.account = a.id
      AND a.total - a.held >= w.amount
    RETURNING a.id
)
INSERT INTO {holds.name} (account, amount, key, status, captured, created_at, expires_at)
SELECT ok.account, ok.amount, ok.key, '{HELD}', 0, ok.created_at, ok.expires_at
FROM ok WHERE ok.account = ANY(ARRAY(SELECT id FROM upd))
RETURNING id, account, key
"""


def batch_capture_statement(capture_prefix: str) -> str:
    """Many captures in one statement (see batch_hold_statement).

    A hold that cannot be captured as asked (closed, expired, too small) is left out and its
    caller takes the transactional path. The money of several captures of one account moves in
    one update of its row, summed. Returns (id, account, key, ref) per ledger line; ref is the
    hold id. A capture key the ledger already uses raises a unique violation (nothing changes).
    Holds are found by `id = ANY($1)`, accounts as in batch_hold_statement.
    """
    prefix = capture_prefix.replace("'", "''")
    return f"""
WITH req AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[])
        AS r(hid, amount, at, reason, meta)
), h AS (
    UPDATE {holds.name} w SET status = '{CAPTURED}', captured = r.amount, closed_at = r.at
    FROM req r
    WHERE w.id = ANY($1::bigint[]) AND w.id = r.hid AND w.status = '{HELD}'
      AND w.expires_at > r.at AND w.amount >= r.amount
    RETURNING w.id, w.account, w.amount AS held, r.amount AS spent, w.key, r.at, r.reason, r.meta
), want AS (
    SELECT account, sum(held)::bigint AS held, sum(spent)::bigint AS spent FROM h GROUP BY account
), locked AS (
    SELECT a.id FROM {accounts.name} a WHERE a.id = ANY(ARRAY(SELECT account FROM want))
    ORDER BY a.id COLLATE "C" FOR UPDATE
), moved AS (
    UPDATE {accounts.name} a SET held = a.held - w.held, total = a.total - w.spent
    FROM want w
    WHERE a.id = ANY(ARRAY(SELECT id FROM locked)) AND w.account = a.id
)
INSERT INTO {entries.name} (account, kind, amount, key, reason, ref, meta, created_at)
SELECT h.account, '{CAPTURE}', -h.spent, '{prefix}' || h.key, h.reason, h.id::text,
       h.meta::json, h.at
FROM h
RETURNING id, account, key, ref
"""


class KeyTaken(Exception):
    """The statement hit a unique key (a capture: its ledger key is already used)."""


FALLBACK: Any = object()  # the fast statement could not answer; take the transactional path

_HOLD, _CAPTURE = "hold", "capture"
MAX_BATCH = 64


@dataclass(slots=True)
class _Op:
    kind: str
    args: tuple[Any, ...]
    ident: Any  # at most one op per ident in a batch: (account, key) or the hold id
    fut: asyncio.Future[Any]


class FastLane:
    """A few asyncpg connections of the wallet's own, for the fast path only.

    They never begin a transaction, so a connection needs no reset between callers: it goes
    back to the idle list as it is (a pool's release would send a reset query, one more round
    trip per wallet call). SQLAlchemy's pool, with its checkout, greenlet and rollback-on-return,
    stays for the transactional path. A broken or interrupted connection is dropped, never
    reused; at most `size` are open.

    A call that finds a connection free runs alone: one statement (FAST_HOLD, fast_capture).
    Calls that find every connection busy queue, and the next connection to come free takes
    the queued holds (or captures) together as one statement (group commit: one round trip,
    one transaction and one WAL flush for the lot), which is what keeps a busy process within
    reach of the server's raw write rate.

    Every answer is a row (done), None or FALLBACK (not done: the caller takes the
    transactional path, which is idempotent and tells a replay, refusal or conflict apart), or
    KeyTaken (a capture alone whose ledger key is already used).
    """

    def __init__(self, engine: AsyncEngine, size: int, capture_prefix: str) -> None:
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
        self._ops: collections.deque[_Op] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._single = {_HOLD: FAST_HOLD, _CAPTURE: fast_capture(capture_prefix)}
        self._batch_sql = {
            _HOLD: batch_hold_statement(),
            _CAPTURE: batch_capture_statement(capture_prefix),
        }
        self.batches = 0  # statements that carried more than one call (for tests and benches)
        forking.reset_in_child(self, FastLane._forget_parent)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's connections (sockets shared with the parent) and
        queued calls are not ours; they are kept aside, never used or closed."""
        forking.keep((self._idle, self._ops, self._tasks))
        self._idle, self._open = [], 0
        self._ops, self._tasks = collections.deque(), set()

    # -- the calls -------------------------------------------------------------------------

    async def hold(self, account: str, amount: int, key: str, created: Any, expires: Any) -> Any:
        """Reserve and insert a hold: a row (id, ...), or None / FALLBACK (not done)."""
        return await self._submit(_HOLD, (account, amount, key, created, expires), (account, key))

    async def capture(self, hid: int, amount: int, at: Any, reason: str, meta: str | None) -> Any:
        """Capture a hold: a row (id, account, key), or None / FALLBACK; KeyTaken (alone)."""
        return await self._submit(_CAPTURE, (hid, amount, at, reason, meta), hid)

    async def _submit(self, kind: str, args: tuple[Any, ...], ident: Any) -> Any:
        if self._closed:
            return FALLBACK
        if not self._ops and (self._idle or self._open < self.size):
            return await self._alone(kind, args, ident)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops.append(_Op(kind, args, ident, fut))
        return await fut  # a caller that gives up leaves its op to run or not (see _take)

    async def _alone(self, kind: str, args: tuple[Any, ...], ident: Any) -> Any:
        if self._idle:
            conn = self._idle.pop()
        else:
            self._open += 1
            try:
                conn = await asyncpg.connect(*self._args, **self._kwargs)
            except BaseException as exc:
                self._open -= 1
                self._kick()
                if isinstance(exc, Exception):
                    return FALLBACK  # cannot connect now: the transactional path will say why
                raise
        (answer,) = await self._execute(conn, kind, [args], [ident])
        if isinstance(answer, KeyTaken):
            raise answer
        return answer

    async def _execute(
        self, conn: asyncpg.Connection, kind: str, calls: list[tuple[Any, ...]], idents: list[Any]
    ) -> list[Any]:
        """Run one call alone, or several as one batch statement, on `conn`, then give `conn`
        back (or drop it). Each answer: a row, None, FALLBACK, or KeyTaken (a call alone)."""
        try:
            if len(calls) == 1:
                answers = [await conn.fetchrow(self._single[kind], *calls[0])]
            else:
                self.batches += 1
                columns = [list(col) for col in zip(*calls, strict=True)]
                rows = await conn.fetch(self._batch_sql[kind], *columns)
                if kind == _HOLD:
                    found = {(r["account"], r["key"]): r for r in rows}
                else:
                    found = {int(r["ref"]): r for r in rows}
                answers = [found.get(ident) for ident in idents]
        except asyncpg.UniqueViolationError:
            # Alone: the key is taken. In a batch, which call's is unknown: all fall back.
            answers = [KeyTaken() if len(calls) == 1 else FALLBACK] * len(calls)
        except asyncpg.PostgresError:  # an error of the statement; the connection is fine
            answers = [FALLBACK] * len(calls)
        except BaseException as exc:  # broken, or interrupted mid-statement: never reuse it
            self._drop(conn)
            if isinstance(exc, Exception):
                return [FALLBACK] * len(calls)
            raise
        self._release(conn)
        return answers

    # -- connections and the queue -----------------------------------------------------------

    def _release(self, conn: asyncpg.Connection) -> None:
        if self._closed:
            self._drop(conn)
        elif self._ops:
            self._spawn(self._run_batch(conn))
        else:
            self._idle.append(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        self._open -= 1
        conn.terminate()
        self._kick()

    def _kick(self) -> None:
        """Queued calls and room for a connection (one was dropped): open one for them."""
        if self._ops and not self._closed and self._open < self.size:
            self._open += 1
            self._spawn(self._connect_then_batch())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_then_batch(self) -> None:
        try:
            conn = await asyncpg.connect(*self._args, **self._kwargs)
        except Exception:
            self._open -= 1
            if self._open == 0:  # nobody else will serve the queue: every caller falls back
                for op in self._ops:
                    if not op.fut.done():
                        op.fut.set_result(FALLBACK)
                self._ops.clear()
            return
        await self._run_batch(conn)

    def _take(self) -> list[_Op]:
        """The queue's first live call and every later one of its kind, one per ident."""
        taken: list[_Op] = []
        kept: collections.deque[_Op] = collections.deque()
        idents: set[Any] = set()
        kind = None
        while self._ops:
            op = self._ops.popleft()
            if op.fut.done():  # its caller gave up before it was sent: it never runs
                continue
            if kind is None:
                kind = op.kind
            if op.kind == kind and op.ident not in idents and len(taken) < MAX_BATCH:
                taken.append(op)
                idents.add(op.ident)
            else:
                kept.append(op)
        self._ops = kept
        return taken

    async def _run_batch(self, conn: asyncpg.Connection) -> None:
        ops = self._take()
        if not ops:
            self._release(conn)
            return
        try:
            answers = await self._execute(
                conn, ops[0].kind, [op.args for op in ops], [op.ident for op in ops]
            )
        except BaseException:  # cancelled at shutdown: nobody is left waiting for nothing
            answers = [FALLBACK] * len(ops)
            raise
        finally:
            for op, answer in zip(ops, answers, strict=True):
                if op.fut.done():
                    continue
                if isinstance(answer, KeyTaken):
                    op.fut.set_exception(answer)
                else:
                    op.fut.set_result(answer)

    async def close(self) -> None:
        self._closed = True
        for op in self._ops:
            if not op.fut.done():
                op.fut.set_result(FALLBACK)
        self._ops.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
