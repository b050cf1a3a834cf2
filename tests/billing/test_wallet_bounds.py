"""The largest total an account may hold, the same on every backend (SQLite, PostgreSQL, Redis).

Past 2**53 Redis's Lua numbers lose precision, SQLite turns an integer sum into a float (a
balance of 12000000000000000000 against a ledger sum of 12000000000000000003) and PostgreSQL's
BIGINT overflows. So every backend refuses, inside the statement or script that would add it,
any credit that takes a total past MAX_TOTAL: exactly at the bound is fine, one more is
refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

import billing
from billing import (
    MAX_TOTAL,
    Balance,
    BalanceLimitExceeded,
    InsufficientCredits,
    InvalidAmount,
    Wallet,
    WalletError,
)


@pytest.fixture
async def wallet(store_url: str) -> AsyncIterator[Wallet]:
    w = await billing.open_wallet(store_url)
    yield w
    await w.close()


def account() -> str:
    return f"tg:{uuid.uuid4().hex[:8]}"


async def ledger_sum(w: Wallet, acct: str) -> int:
    return sum(e.amount for e in await w.entries(acct, limit=100_000))


def test_the_bound_is_exact_in_a_double() -> None:
    assert MAX_TOTAL == 2**53 - 1
    assert int(float(MAX_TOTAL)) == MAX_TOTAL
    assert issubclass(BalanceLimitExceeded, InvalidAmount)
    assert issubclass(BalanceLimitExceeded, WalletError)


async def test_credit_up_to_the_bound_and_not_one_past(wallet: Wallet) -> None:
    acct = account()
    await wallet.credit(acct, MAX_TOTAL - 1, "first", "grant")
    await wallet.credit(acct, 1, "exactly-at", "grant")
    assert await wallet.balance(acct) == Balance(acct, MAX_TOTAL, 0)
    assert await ledger_sum(wallet, acct) == MAX_TOTAL

    with pytest.raises(BalanceLimitExceeded) as info:
        await wallet.credit(acct, 1, "one-past", "grant")
    assert (info.value.account, info.value.amount, info.value.total) == (acct, 1, MAX_TOTAL)
    assert info.value.limit == MAX_TOTAL
    assert await wallet.balance(acct) == Balance(acct, MAX_TOTAL, 0)
    assert len(await wallet.entries(acct)) == 2
    assert await ledger_sum(wallet, acct) == MAX_TOTAL

    # Nothing of the refused credit remains: its key is still free once there is room.
    await wallet.debit(acct, 10, "room", "reversal")
    entry = await wallet.credit(acct, 1, "one-past", "grant")
    assert entry.amount == 1
    assert await wallet.balance(acct) == Balance(acct, MAX_TOTAL - 9, 0)
    assert await ledger_sum(wallet, acct) == MAX_TOTAL - 9


async def test_one_credit_larger_than_the_bound_is_refused(wallet: Wallet) -> None:
    acct = account()
    await wallet.credit(acct, MAX_TOTAL, "at-once", "grant")  # the bound in one credit is fine
    other = account()
    for huge in (MAX_TOTAL + 1, 4 * 10**18, 10**33):
        with pytest.raises(BalanceLimitExceeded):
            await wallet.credit(other, huge, f"huge-{huge}", "typo")
    assert await wallet.balance(other) == Balance(other, 0, 0)
    assert await wallet.entries(other) == []
    with pytest.raises(InvalidAmount):  # no hold could ever be that large either
        await wallet.hold(acct, MAX_TOTAL + 1, "hold-huge", 60)
    assert await wallet.balance(acct) == Balance(acct, MAX_TOTAL, 0)


async def test_three_big_grants_stop_at_the_bound(wallet: Wallet) -> None:
    """The attack: three grants of 4e12 credits each (4e15 millicredits)."""
    acct = account()
    grant = 4 * 10**15
    await wallet.credit(acct, grant, "g1", "grant")
    await wallet.credit(acct, grant, "g2", "grant")
    with pytest.raises(BalanceLimitExceeded):
        await wallet.credit(acct, grant, "g3", "grant")
    b = await wallet.balance(acct)
    assert b == Balance(acct, 2 * grant, 0)
    assert type(b.total) is int and await ledger_sum(wallet, acct) == b.total


async def test_holds_and_captures_at_the_bound_stay_exact(wallet: Wallet) -> None:
    acct = account()
    await wallet.credit(acct, MAX_TOTAL, "top", "grant")
    h = await wallet.hold(acct, MAX_TOTAL, "all", 60)
    assert await wallet.balance(acct) == Balance(acct, MAX_TOTAL, MAX_TOTAL)
    with pytest.raises(InsufficientCredits):
        await wallet.hold(acct, 1, "more", 60)
    spent = await wallet.capture(h.id, MAX_TOTAL - 1, reason="all but one")
    assert spent.amount == -(MAX_TOTAL - 1)
    assert await wallet.balance(acct) == Balance(acct, 1, 0)
    assert await ledger_sum(wallet, acct) == 1
    # Back up to the bound and down again with a debit: every step exact.
    await wallet.credit(acct, MAX_TOTAL - 1, "refill", "grant")
    await wallet.debit(acct, MAX_TOTAL, "reverse-all", "reversal")
    assert await wallet.balance(acct) == Balance(acct, 0, 0)
    assert await ledger_sum(wallet, acct) == 0


async def test_concurrent_credits_near_the_bound_stop_exactly_at_it(wallet: Wallet) -> None:
    """The bound is checked where the total changes, so racing credits cannot pass it."""
    acct = account()
    quarter = MAX_TOTAL // 4
    results = await asyncio.gather(
        *(wallet.credit(acct, quarter, f"q{i}", "grant") for i in range(10)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 4
    assert all(isinstance(r, BalanceLimitExceeded) for r in lost), lost[:3]
    b = await wallet.balance(acct)
    assert b.total == 4 * quarter <= MAX_TOTAL
    assert await ledger_sum(wallet, acct) == b.total
