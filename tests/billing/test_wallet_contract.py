"""The wallet contract, run unchanged against every backend (SQLite file, PostgreSQL, Redis).

Each test states a rule a user or operator relies on: nobody spends credit they do not have,
a retried call never charges twice, an expired hold is never captured, and every balance is
the sum of its ledger.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

import billing
from billing import (
    Balance,
    HoldNotActive,
    HoldNotFound,
    InsufficientCredits,
    InvalidAmount,
    Wallet,
)
from billing.wallet.base import CAPTURE, CAPTURED, CREDIT, DEBIT, EXPIRED, HELD, VOIDED


@pytest.fixture
async def wallet(store_url: str) -> AsyncIterator[Wallet]:
    w = await billing.open_wallet(store_url)
    yield w
    await w.close()


def key(label: str = "k") -> str:
    return f"{label}-{uuid.uuid4().hex}"


async def funded(w: Wallet, amount: int) -> str:
    account = f"tg:{uuid.uuid4().hex[:8]}"
    await w.credit(account, amount, key("topup"), "top-up")
    return account


async def ledger_sum(w: Wallet, account: str) -> int:
    return sum(e.amount for e in await w.entries(account, limit=100_000))


async def test_is_a_wallet(wallet: Wallet) -> None:
    assert isinstance(wallet, Wallet)


async def test_credit_twice_with_one_key_credits_once(wallet: Wallet) -> None:
    k = key("pay")
    first = await wallet.credit("u1", 5_000, k, "stars top-up", meta={"charge": "c1"})
    again = await wallet.credit("u1", 5_000, k, "stars top-up", meta={"charge": "c1"})
    assert again == first
    assert first.kind == CREDIT and first.amount == 5_000 and first.meta == {"charge": "c1"}
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert await wallet.balance("u1") == Balance("u1", 5_000, 0)
    assert len(await wallet.entries("u1")) == 1


async def test_unknown_account_is_all_zeros(wallet: Wallet) -> None:
    b = await wallet.balance("nobody")
    assert (b.total, b.held, b.available) == (0, 0, 0)
    assert await wallet.entries("nobody") == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
async def test_amounts_are_positive_integers(wallet: Wallet, bad: object) -> None:
    acct = await funded(wallet, 1_000)
    with pytest.raises(InvalidAmount):
        await wallet.credit(acct, bad, key(), "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        await wallet.hold(acct, bad, key(), 60)  # type: ignore[arg-type]
    assert await wallet.balance(acct) == Balance(acct, 1_000, 0)


async def test_hold_reserves_and_is_idempotent(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    k = key("hold")
    h = await wallet.hold(acct, 3_000, k, 60)
    assert (h.status, h.amount, h.captured, h.entry_id) == (HELD, 3_000, 0, None)
    assert h.expires_at > h.created_at
    assert await wallet.hold(acct, 3_000, k, 60) == h
    assert await wallet.get_hold(h.id) == h
    b = await wallet.balance(acct)
    assert (b.total, b.held, b.available) == (10_000, 3_000, 7_000)


async def test_hold_beyond_available_is_refused(wallet: Wallet) -> None:
    acct = await funded(wallet, 1_000)
    await wallet.hold(acct, 600, key(), 60)
    with pytest.raises(InsufficientCredits) as info:
        await wallet.hold(acct, 401, key(), 60)
    assert (info.value.requested, info.value.available) == (401, 400)
    with pytest.raises(InsufficientCredits) as nobody:
        await wallet.hold("nobody", 1, key(), 60)
    assert nobody.value.available == 0
    assert (await wallet.balance(acct)).held == 600
    await wallet.hold(acct, 400, key(), 60)  # exactly the rest is fine
    assert (await wallet.balance(acct)).available == 0


async def test_capture_spends_part_and_releases_the_rest(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    h = await wallet.hold(acct, 4_000, key(), 60)
    meta = {"model": "gpt-4", "prompt_tokens": 12, "completion_tokens": 30, "rule": "usage"}
    e = await wallet.capture(h.id, 1_234, reason="chat gpt-4", meta=meta)
    assert (e.kind, e.amount, e.account, e.ref, e.meta) == (CAPTURE, -1_234, acct, h.id, meta)
    assert e.reason == "chat gpt-4"
    assert await wallet.balance(acct) == Balance(acct, 8_766, 0)
    done = await wallet.get_hold(h.id)
    assert (done.status, done.captured, done.entry_id) == (CAPTURED, 1_234, e.id)
    assert await wallet.get_entry(e.id) == e


async def test_capture_zero_releases_everything(wallet: Wallet) -> None:
    acct = await funded(wallet, 1_000)
    h = await wallet.hold(acct, 700, key(), 60)
    e = await wallet.capture(h.id, 0, reason="failed before output")
    assert e.amount == 0
    assert await wallet.balance(acct) == Balance(acct, 1_000, 0)


async def test_capture_more_than_held_is_refused(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    h = await wallet.hold(acct, 500, key(), 60)
    with pytest.raises(InvalidAmount):
        await wallet.capture(h.id, 501)
    assert (await wallet.get_hold(h.id)).status == HELD
    assert await wallet.balance(acct) == Balance(acct, 10_000, 500)


async def test_second_capture_returns_the_first_entry(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    h = await wallet.hold(acct, 500, key(), 60)
    first = await wallet.capture(h.id, 300, reason="chat")
    assert await wallet.capture(h.id, 300, reason="chat") == first
    assert await wallet.capture(h.id, 100) == first  # a replay never charges again
    assert await wallet.balance(acct) == Balance(acct, 9_700, 0)
    assert len(await wallet.entries(acct)) == 2


async def test_void_releases_and_replays(wallet: Wallet) -> None:
    acct = await funded(wallet, 2_000)
    h = await wallet.hold(acct, 1_500, key(), 60)
    v = await wallet.void(h.id, reason="upstream 500")
    assert (v.id, v.status, v.captured) == (h.id, VOIDED, 0)
    assert await wallet.void(h.id) == v
    assert await wallet.balance(acct) == Balance(acct, 2_000, 0)
    assert len(await wallet.entries(acct)) == 1  # a void moves no money: no ledger line


async def test_void_after_capture_and_capture_after_void_are_refused(wallet: Wallet) -> None:
    acct = await funded(wallet, 2_000)
    captured = await wallet.hold(acct, 500, key(), 60)
    await wallet.capture(captured.id, 200)
    with pytest.raises(HoldNotActive) as info:
        await wallet.void(captured.id)
    assert info.value.status == CAPTURED
    voided = await wallet.hold(acct, 500, key(), 60)
    await wallet.void(voided.id)
    with pytest.raises(HoldNotActive) as info2:
        await wallet.capture(voided.id, 100)
    assert info2.value.status == VOIDED
    assert await wallet.balance(acct) == Balance(acct, 1_800, 0)


async def test_unknown_hold(wallet: Wallet) -> None:
    for missing in ("999999", "no-such-hold"):
        with pytest.raises(HoldNotFound):
            await wallet.get_hold(missing)
        with pytest.raises(HoldNotFound):
            await wallet.capture(missing, 1)
        with pytest.raises(HoldNotFound):
            await wallet.void(missing)


async def test_expired_hold_is_never_captured(wallet: Wallet) -> None:
    acct = await funded(wallet, 1_000)
    h = await wallet.hold(acct, 800, key(), 0.2)
    await asyncio.sleep(0.3)
    with pytest.raises(HoldNotActive) as info:
        await wallet.capture(h.id, 800)
    assert info.value.status == EXPIRED
    assert (await wallet.get_hold(h.id)).status == EXPIRED
    assert await wallet.balance(acct) == Balance(acct, 1_000, 0)
    with pytest.raises(HoldNotActive):
        await wallet.capture(h.id, 1)  # and stays refused
    assert await wallet.sweep() == 0  # already released: nothing left to sweep


async def test_void_of_an_expired_hold_releases_it_as_expired(wallet: Wallet) -> None:
    acct = await funded(wallet, 1_000)
    h = await wallet.hold(acct, 800, key(), 0.2)
    await asyncio.sleep(0.3)
    with pytest.raises(HoldNotActive) as info:
        await wallet.void(h.id)
    assert info.value.status == EXPIRED
    assert await wallet.balance(acct) == Balance(acct, 1_000, 0)


async def test_sweeper_voids_exactly_the_expired_holds(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    short = [await wallet.hold(acct, 1_000, key(), 0.2) for _ in range(3)]
    long = await wallet.hold(acct, 2_000, key(), 3_600)
    assert (await wallet.balance(acct)).held == 5_000
    await asyncio.sleep(0.3)
    assert await wallet.sweep() == 3
    assert await wallet.sweep() == 0
    assert await wallet.balance(acct) == Balance(acct, 10_000, 2_000)
    for h in short:
        assert (await wallet.get_hold(h.id)).status == EXPIRED
        with pytest.raises(HoldNotActive):
            await wallet.capture(h.id, 1)
    assert [h.id for h in await wallet.open_holds() if h.account == acct] == [long.id]
    # A sweep at a given instant: an hour and a bit later, the long hold is due too.
    assert await wallet.sweep(datetime.now(UTC) + timedelta(hours=2)) == 1
    assert await wallet.balance(acct) == Balance(acct, 10_000, 0)


async def test_debit_takes_back_only_what_is_available(wallet: Wallet) -> None:
    acct = await funded(wallet, 5_000)
    await wallet.hold(acct, 1_000, key(), 60)
    k = key("reverse")
    d = await wallet.debit(acct, 3_000, k, "stars refund", ref="e1")
    assert (d.kind, d.amount, d.ref) == (DEBIT, -3_000, "e1")
    assert await wallet.debit(acct, 3_000, k, "stars refund", ref="e1") == d
    with pytest.raises(InsufficientCredits) as info:
        await wallet.debit(acct, 1_001, key(), "too much")
    assert info.value.available == 1_000
    assert await wallet.balance(acct) == Balance(acct, 2_000, 1_000)


async def test_entries_newest_first_with_limit_and_before(wallet: Wallet) -> None:
    acct = await funded(wallet, 100)
    for i in range(4):
        await wallet.credit(acct, 1 + i, key(), f"grant {i}")
    all_ = await wallet.entries(acct)
    assert [e.amount for e in all_] == [4, 3, 2, 1, 100]
    assert [e.created_at for e in all_] == sorted((e.created_at for e in all_), reverse=True)
    assert [e.amount for e in await wallet.entries(acct, limit=2)] == [4, 3]
    older = await wallet.entries(acct, limit=2, before=all_[1].created_at)
    assert [e.amount for e in older] == [2, 1]
    assert all(e.account == acct for e in all_)


async def test_entry_ids_are_short_and_found(wallet: Wallet) -> None:
    acct = await funded(wallet, 100)
    e = await wallet.credit(acct, 5, key(), "compensation", ref="42", meta={"why": "bad"})
    assert e.id.isprintable() and " " not in e.id and len(e.id) <= 40
    assert await wallet.get_entry(e.id) == e
    assert await wallet.get_entry("999999999") is None
    assert await wallet.get_entry("not an id") is None


async def test_accounts_and_open_holds(wallet: Wallet) -> None:
    a = await funded(wallet, 1_000)
    b = await funded(wallet, 1_000)
    ha = await wallet.hold(a, 100, key(), 60)
    hb = await wallet.hold(b, 200, key(), 60)
    await wallet.capture(hb.id, 50)
    assert {a, b} <= set(await wallet.accounts())
    assert [h.id for h in await wallet.open_holds()] == [ha.id]


async def test_balance_equals_ledger_sum(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    h1 = await wallet.hold(acct, 3_000, key(), 60)
    await wallet.capture(h1.id, 2_500)
    h2 = await wallet.hold(acct, 1_000, key(), 60)
    await wallet.void(h2.id)
    await wallet.debit(acct, 700, key(), "reversal")
    await wallet.credit(acct, 300, key(), "compensation")
    await wallet.hold(acct, 400, key(), 60)
    b = await wallet.balance(acct)
    assert b.total == await ledger_sum(wallet, acct) == 7_100
    assert b.held == 400


async def test_500_concurrent_holds_exactly_37_succeed(wallet: Wallet) -> None:
    acct = await funded(wallet, 37 * 1_000)
    results = await asyncio.gather(
        *(wallet.hold(acct, 1_000, key(f"race{i}"), 60) for i in range(500)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, InsufficientCredits) for r in lost), lost[:3]
    assert len(won) == 37
    b = await wallet.balance(acct)
    assert (b.total, b.held, b.available) == (37_000, 37_000, 0)


async def test_concurrent_replays_of_one_key_hold_once(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    k = key("dup")
    results = await asyncio.gather(*(wallet.hold(acct, 1_000, k, 60) for _ in range(50)))
    assert len({h.id for h in results}) == 1
    assert (await wallet.balance(acct)).held == 1_000
    captures = await asyncio.gather(*(wallet.capture(results[0].id, 600) for _ in range(20)))
    assert len({e.id for e in captures}) == 1
    assert await wallet.balance(acct) == Balance(acct, 9_400, 0)


async def test_capture_racing_void_settles_each_hold_once(wallet: Wallet) -> None:
    acct = await funded(wallet, 100_000)
    hs = [await wallet.hold(acct, 1_000, key(), 60) for _ in range(20)]
    results = await asyncio.gather(
        *(op for h in hs for op in (wallet.capture(h.id, 300), wallet.void(h.id))),
        return_exceptions=True,
    )
    assert all(not isinstance(r, Exception) or isinstance(r, HoldNotActive) for r in results)
    captured = [h for h in hs if (await wallet.get_hold(h.id)).status == CAPTURED]
    b = await wallet.balance(acct)
    assert b.held == 0
    assert b.total == 100_000 - 300 * len(captured) == await ledger_sum(wallet, acct)


async def test_concurrent_sweeps_release_each_hold_once(wallet: Wallet) -> None:
    acct = await funded(wallet, 10_000)
    for _ in range(10):
        await wallet.hold(acct, 500, key(), 0.2)
    await asyncio.sleep(0.3)
    counts = await asyncio.gather(*(wallet.sweep() for _ in range(5)))
    assert sum(counts) == 10
    assert await wallet.balance(acct) == Balance(acct, 10_000, 0)


# --- idempotency keys are per account; a key reused for another operation is refused ---------


async def test_same_key_on_two_accounts_is_two_payments(wallet: Wallet) -> None:
    """A payment key replayed after /link resolves another account: each account is its own."""
    k = key("wxpay")
    a, b = f"wechat:{uuid.uuid4().hex[:8]}", f"telegram:{uuid.uuid4().hex[:8]}"
    first = await wallet.credit(a, 100_000, k, "WeChat Pay top-up")
    second = await wallet.credit(b, 100_000, k, "WeChat Pay top-up")
    assert first.account == a and second.account == b and second.id != first.id
    assert (await wallet.balance(a)).total == 100_000
    assert (await wallet.balance(b)).total == 100_000


async def test_same_hold_key_on_two_accounts_holds_each(wallet: Wallet) -> None:
    a, b = await funded(wallet, 10_000), await funded(wallet, 10_000)
    k = key("chat")
    ha = await wallet.hold(a, 5_000, k, ttl=60)
    hb = await wallet.hold(b, 4_000, k, ttl=60)
    assert hb.id != ha.id and hb.account == b and hb.amount == 4_000 and hb.status == HELD
    assert (await wallet.balance(a)).held == 5_000 and (await wallet.balance(b)).held == 4_000
    await wallet.capture(hb.id, 1_000)
    assert (await wallet.get_hold(ha.id)).status == HELD
    assert (await wallet.balance(a)).total == 10_000
    assert (await wallet.balance(b)).total == 9_000


async def test_key_replayed_with_another_amount_is_refused(wallet: Wallet) -> None:
    account = await funded(wallet, 10_000)
    k = key("pay")
    first = await wallet.credit(account, 3_000, k, "top-up")
    with pytest.raises(billing.IdempotencyConflict) as caught:
        await wallet.credit(account, 4_000, k, "top-up")
    assert caught.value.account == account and caught.value.key == k
    assert caught.value.first == first
    hold = await wallet.hold(account, 2_000, k + ":h", ttl=60)
    with pytest.raises(billing.IdempotencyConflict):
        await wallet.hold(account, 2_500, k + ":h", ttl=60)
    assert await wallet.get_hold(hold.id) == hold
    assert await wallet.balance(account) == Balance(account, 13_000, 2_000)
    assert await ledger_sum(wallet, account) == 13_000


async def test_key_replayed_as_another_kind_is_refused(wallet: Wallet) -> None:
    account = await funded(wallet, 10_000)
    k = key("op")
    await wallet.credit(account, 1_000, k, "grant")
    with pytest.raises(billing.IdempotencyConflict):
        await wallet.debit(account, 1_000, k, "reversal")
    with pytest.raises(billing.IdempotencyConflict):
        await wallet.hold(account, 1_000, k, ttl=60)
    h = key("hold")
    await wallet.hold(account, 1_000, h, ttl=60)
    with pytest.raises(billing.IdempotencyConflict):
        await wallet.credit(account, 1_000, h, "grant")
    assert await wallet.balance(account) == Balance(account, 11_000, 1_000)
    assert len(await wallet.entries(account)) == 2


async def test_true_replays_return_the_first_result(wallet: Wallet) -> None:
    account = await funded(wallet, 10_000)
    k = key("op")
    debit = await wallet.debit(account, 1_000, k, "reversal")
    assert await wallet.debit(account, 1_000, k, "reversal") == debit
    hold = await wallet.hold(account, 2_000, key("hold"), ttl=60)
    assert await wallet.hold(account, 2_000, hold.key, ttl=60) == hold
    spent = await wallet.capture(hold.id, 500)
    assert await wallet.capture(hold.id, 500) == spent
    assert await wallet.balance(account) == Balance(account, 8_500, 0)


async def test_a_capture_key_counts_as_used(wallet: Wallet) -> None:
    """`capture:` + the hold's key names the capture's entry; a later credit cannot reuse it."""
    account = await funded(wallet, 10_000)
    hold = await wallet.hold(account, 2_000, key("chat"), ttl=60)
    spent = await wallet.capture(hold.id, 1_500)
    assert spent.key == "capture:" + hold.key
    with pytest.raises(billing.IdempotencyConflict):
        await wallet.credit(account, 1_500, spent.key, "refund")
    assert await wallet.balance(account) == Balance(account, 8_500, 0)
    # ...and a key taken first by a credit makes that hold's capture a conflict
    taken = await wallet.hold(account, 1_000, key("chat"), ttl=60)
    await wallet.credit(account, 1_000, "capture:" + taken.key, "grant")
    with pytest.raises(billing.IdempotencyConflict):
        await wallet.capture(taken.id, 1_000)
    assert await wallet.balance(account) == Balance(account, 9_500, 1_000)
    assert await ledger_sum(wallet, account) == 9_500
