"""PostgreSQL's fast path: holds and captures on the wallet's own asyncpg connections.

A hold or capture that simply succeeds is one autocommit statement on a connection of the
wallet's `FastLane` (several queued callers' calls go as one statement); anything else falls
back to the transactional path. These tests give that lane a bad day: connections killed by
the server, more callers than connections, batches mixing refusals, replays, expired holds and
taken keys, a caller cancelled mid-statement. Each time the money must come out exactly as the
rules say.
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
    assert await lane.hold("a", 1, "k", None, None) is FALLBACK
    await wallet.credit("a", 5_000, "fund", "test")
    h = await wallet.hold("a", 1_000, uuid.uuid4().hex, 60)  # the transactional path serves
    await wallet.capture(h.id, 1_000)
    assert (await wallet.balance("a")).total == 4_000


async def test_batches_sort_out_refusals_replays_and_conflicts(wallet: SqlWallet) -> None:
    """Many callers at once on a few shared accounts: batches form, and every call ends as
    it would alone — refused when the account cannot cover it, a replay answered with the
    first hold, a key a ledger entry uses refused, an expired hold never captured."""
    lane = wallet._fast
    assert lane is not None
    lane.size = 2  # few connections, so calls queue and go in batches
    for a in ("rich", "poor", "mid"):
        await wallet.credit(a, {"rich": 10**9, "poor": 2_500, "mid": 60_000}[a], "fund", "t")
    await wallet.credit("mid", 1, "taken-key", "t")  # a ledger key a hold may not reuse
    first = await wallet.hold("rich", 1_000, "replayed", 60)
    stale = await wallet.hold("mid", 1_000, "stale", 0.05)
    await asyncio.sleep(0.1)  # the stale hold expires

    async def attempt(coro):
        try:
            return await coro
        except Exception as exc:
            return exc

    calls = []
    for i in range(40):
        calls.append(wallet.hold("rich", 1_000, f"r{i}", 60))
        calls.append(wallet.hold("poor", 1_000, f"p{i}", 60))
        calls.append(wallet.hold("mid", 1_000, f"m{i}", 60))
    calls.append(wallet.hold("rich", 1_000, "replayed", 60))
    calls.append(wallet.hold("mid", 1_000, "taken-key", 60))
    calls.append(wallet.capture(stale.id, 500))
    out = await asyncio.gather(*(attempt(c) for c in calls))
    assert lane.batches > 0
    rich = [o for o in out[0:120:3]]
    poor = [o for o in out[1:120:3]]
    mid = [o for o in out[2:120:3]]
    assert all(getattr(o, "status", None) == HELD for o in rich)
    assert sum(1 for o in poor if getattr(o, "status", None) == HELD) == 2  # 2,500 covers 2
    assert all(isinstance(o, InsufficientCredits) for o in poor if not hasattr(o, "status"))
    assert all(getattr(o, "status", None) == HELD for o in mid)
    assert out[120].id == first.id  # the replay
    assert type(out[121]).__name__ == "IdempotencyConflict"
    assert type(out[122]).__name__ == "HoldNotActive"  # expired: never captured
    # Capture everything held, many at once (batches of captures, several per account).
    held = [o for o in out[:120] if getattr(o, "status", None) == HELD] + [first]
    entries = await asyncio.gather(*(wallet.capture(h.id, 700) for h in held))
    assert len({e.id for e in entries}) == len(held)
    again = await asyncio.gather(*(wallet.capture(h.id, 700) for h in held))  # replays
    assert [e.id for e in again] == [e.id for e in entries]
    for a, n, fund in (("rich", 41, 10**9), ("poor", 2, 2_500), ("mid", 40, 60_001)):
        bal = await wallet.balance(a)
        assert bal.total == fund - 700 * n, a
        await _consistent(wallet, a)
    assert (await wallet.balance("mid")).held == 0
    assert (await wallet.balance("rich")).held == 0


async def test_a_batch_on_a_dropped_connection_falls_back(
    wallet: SqlWallet, postgres_url: str
) -> None:
    """Every lane connection killed while calls queue: each call still lands exactly once."""
    lane = wallet._fast
    assert lane is not None
    lane.size = 2
    accounts = [f"d{i}" for i in range(20)]
    for a in accounts:
        await wallet.credit(a, 100_000, "fund", "t")
    for a in accounts[:2]:
        await wallet.hold(a, 1, f"warm-{a}", 60)  # open the connections
    pids = await _fast_backends(postgres_url, wallet)
    admin = await asyncpg.connect(_dsn(postgres_url))

    async def spend(a: str, i: int) -> None:
        h = await wallet.hold(a, 1_000, f"k{i}", 60)
        await wallet.capture(h.id, 400)

    try:
        work = asyncio.gather(*(spend(a, i) for a in accounts for i in range(5)))
        await asyncio.sleep(0)
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await work
    finally:
        await admin.close()
    for a in accounts:
        bal = await wallet.balance(a)
        assert bal.total == 100_000 - 5 * 400
        await _consistent(wallet, a)


@pytest.mark.slow
async def test_the_two_hold_paths_race_a_key_without_deadlock(postgres_url: str) -> None:
    """A hold on the transactional path (another process whose fast path is off) and the same
    hold replayed on the fast path: both take the account's row before the hold's key, so they
    never deadlock (which would stall both for deadlock_timeout) and the key holds once."""
    slow = await billing.open_wallet(postgres_url)
    fast = await billing.open_wallet(postgres_url)
    assert isinstance(slow, SqlWallet) and isinstance(fast, SqlWallet)
    assert slow._fast is not None
    await slow._fast.close()  # this one always takes the transactional path
    try:
        await fast.credit("a", 10**9, "fund", "t")
        worst = 0.0

        async def timed(w: SqlWallet, key: str) -> str:
            nonlocal worst
            started = asyncio.get_running_loop().time()
            hold = await w.hold("a", 1_000, key, 60)
            worst = max(worst, asyncio.get_running_loop().time() - started)
            return hold.id

        for round_ in range(10):
            keys = [f"k{round_}-{i}" for i in range(20)]
            ids = await asyncio.gather(
                *(timed(w, k) for k in keys for w in (slow, fast)),
            )
            assert ids[0::2] == ids[1::2]  # each key: one hold, both callers told its id
        assert worst < 0.8, f"a hold waited {worst:.2f} s (a deadlock?)"
        bal = await fast.balance("a")
        assert bal.held == 200 * 1_000
    finally:
        await slow.close()
        await fast.close()
