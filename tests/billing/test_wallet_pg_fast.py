"""PostgreSQL's fast path: holds and captures on the wallet's own asyncpg connections.

A hold or capture that simply succeeds is one autocommit statement on a connection of the
wallet's `FastLane`; anything else falls back to the transactional path. These tests give that
lane a bad day: connections killed by the server, more callers than connections, a caller
cancelled mid-statement. Each time the money must come out exactly as the rules say.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

import billing
from billing import InsufficientCredits
from billing.wallet.base import CAPTURED, HELD
from billing.wallet.sql_pg import FALLBACK
from billing.wallet.sql_wallet import SqlWallet


@pytest.fixture
async def wallet(postgres_url: str) -> AsyncIterator[SqlWallet]:
    w = await billing.open_wallet(postgres_url)
    assert isinstance(w, SqlWallet)
    yield w
    await w.close()


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _consistent(w: SqlWallet, account: str) -> None:
    """The balance equals the ledger, and `held` equals the live holds."""
    bal = await w.balance(account)
    assert bal.total == sum(e.amount for e in await w.entries(account, limit=10_000))
    live = [h for h in await w.open_holds() if h.account == account]
    assert bal.held == sum(h.amount for h in live)


async def _fast_backends(url: str, w: SqlWallet) -> list[int]:
    """Server pids of the fast lane's open connections."""
    lane = w._fast
    assert lane is not None
    conns = list(lane._idle)
    return [c.get_server_pid() for c in conns]


async def test_fast_path_serves_plain_holds_and_captures(wallet: SqlWallet) -> None:
    await wallet.credit("a", 10_000, "fund", "test")
    hold = await wallet.hold("a", 3_000, "h1", 60)
    entry = await wallet.capture(hold.id, 1_000)
    assert entry.amount == -1_000
    assert (await wallet.get_hold(hold.id)).status == CAPTURED
    lane = wallet._fast
    assert lane is not None and lane._open >= 1  # the lane, not SQLAlchemy, answered
    await _consistent(wallet, "a")


async def test_refusal_and_replay_fall_back_and_answer_as_before(wallet: SqlWallet) -> None:
    await wallet.credit("a", 5_000, "fund", "test")
    with pytest.raises(InsufficientCredits) as refused:
        await wallet.hold("a", 6_000, "too-much", 60)
    assert refused.value.available == 5_000
    first = await wallet.hold("a", 2_000, "same", 60)
    again = await wallet.hold("a", 2_000, "same", 60)  # replay: the first hold
    assert again.id == first.id and again.status == HELD
    e1 = await wallet.capture(first.id, 500)
    e2 = await wallet.capture(first.id, 500)  # replay: the first entry
    assert e1.id == e2.id
    assert (await wallet.balance("a")).total == 4_500
    await _consistent(wallet, "a")


async def test_connections_killed_by_the_server_are_replaced(
    wallet: SqlWallet, postgres_url: str
) -> None:
    await wallet.credit("a", 100_000, "fund", "test")
    for i in range(4):  # open some lane connections
        h = await wallet.hold("a", 1_000, f"warm-{i}", 60)
        await wallet.capture(h.id, 100)
    pids = await _fast_backends(postgres_url, wallet)
    assert pids
    admin = await asyncpg.connect(_dsn(postgres_url))
    try:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)
    # Every call still lands exactly once: the dead connection makes the fast statement fall
    # back to the transaction, which finds (by key, by status) whether it already happened.
    for i in range(len(pids) + 2):
        h = await wallet.hold("a", 1_000, f"after-{i}", 60)
        await wallet.capture(h.id, 100)
    bal = await wallet.balance("a")
    assert bal.total == 100_000 - 100 * (4 + len(pids) + 2)
    assert bal.held == 0
    lane = wallet._fast
    assert lane is not None and 0 < lane._open <= lane.size
    await _consistent(wallet, "a")


async def test_more_callers_than_connections(wallet: SqlWallet) -> None:
    lane = wallet._fast
    assert lane is not None
    accounts = [f"u{i}" for i in range(lane.size * 4)]
    for a in accounts:
        await wallet.credit(a, 10_000, "fund", "test")
    peak = 0

    async def spend(a: str, i: int) -> None:
        nonlocal peak
        h = await wallet.hold(a, 1_000, f"k{i}", 60)
        peak = max(peak, lane._open)
        await wallet.capture(h.id, 300)

    await asyncio.gather(*(spend(a, i) for a in accounts for i in range(5)))
    assert peak <= lane.size
    for a in accounts:
        assert (await wallet.balance(a)).total == 10_000 - 5 * 300
        await _consistent(wallet, a)


async def test_cancelled_mid_statement_never_reuses_the_connection(wallet: SqlWallet) -> None:
    """A caller cancelled while its statement is on the wire: the connection is dropped (its
    state is unknown), and whatever the server did is found by the retried call's key."""
    await wallet.credit("a", 1_000_000, "fund", "test")
    cancelled = 0
    for i in range(30):
        task = asyncio.ensure_future(wallet.hold("a", 1_000, f"c{i}", 60))
        await asyncio.sleep(0.0002 * (i % 5))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
        retried = await wallet.hold("a", 1_000, f"c{i}", 60)  # the caller tries again
        await wallet.capture(retried.id, 10)
    assert cancelled > 0
    bal = await wallet.balance("a")
    assert bal.held == 0
    assert bal.total == 1_000_000 - 30 * 10
    lane = wallet._fast
    assert lane is not None and 0 <= lane._open <= lane.size
    await _consistent(wallet, "a")


async def test_a_closed_lane_answers_fallback(wallet: SqlWallet) -> None:
    lane = wallet._fast
    assert lane is not None
    await lane.close()
    assert await lane.fetchrow("SELECT 1") is FALLBACK
    await wallet.credit("a", 5_000, "fund", "test")
    h = await wallet.hold("a", 1_000, uuid.uuid4().hex, 60)  # the transactional path serves
    await wallet.capture(h.id, 1_000)
    assert (await wallet.balance("a")).total == 4_000
