"""After a random mix of 10,000 wallet operations every balance still equals its ledger.

Seeded (WALLET_RANDOM_SEED overrides), run in concurrent batches so operations of one batch race
each other, with replays of earlier keys, captures above the hold, holds that expire while in
use, debits past available and sweeps in between. Refusals are expected; anything else fails.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import billing
from billing import HoldNotActive, InsufficientCredits, InvalidAmount, Wallet

OPERATIONS = 10_000
BATCH = 100
ACCOUNTS = [f"rnd:{c}" for c in "abcde"]
SEED = int(os.environ.get("WALLET_RANDOM_SEED", "20261128"))
REFUSALS = (InsufficientCredits, HoldNotActive, InvalidAmount)


class Mix:
    """Draws operations from what earlier batches left behind (keys, holds) and checks replays."""

    def __init__(self, wallet: Wallet, rng: random.Random) -> None:
        self.w = wallet
        self.rng = rng
        self.money_keys: list[tuple[str, str, str, int]] = []  # (kind, key, account, amount)
        self.hold_keys: list[tuple[str, str, int, float]] = []  # (key, account, amount, ttl)
        self.holds: list[tuple[str, int]] = []  # (hold id, amount)
        self.seen: dict[str, set[str]] = defaultdict(set)  # key -> ids of successful results
        self.counter = 0

    def _key(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{SEED}-{self.counter}"

    def draw(self) -> tuple[str, Awaitable[Any]]:
        rng, w = self.rng, self.w
        r = rng.random()
        acct = rng.choice(ACCOUNTS)
        if r < 0.18:
            k, amount = self._key("credit"), rng.randint(1, 5_000)
            self.money_keys.append(("credit", k, acct, amount))
            return k, w.credit(acct, amount, k, "top-up")
        if r < 0.24 and self.money_keys:
            kind, k, acct, amount = rng.choice(self.money_keys)
            call = w.credit if kind == "credit" else w.debit
            return k, call(acct, amount, k, "replay")
        if r < 0.30:
            k, amount = self._key("debit"), rng.randint(1, 3_000)
            self.money_keys.append(("debit", k, acct, amount))
            return k, w.debit(acct, amount, k, "reversal")
        if r < 0.55:
            k, amount = self._key("hold"), rng.randint(1, 4_000)
            ttl = 0.001 if rng.random() < 0.1 else 60.0
            self.hold_keys.append((k, acct, amount, ttl))
            return k, w.hold(acct, amount, k, ttl)
        if r < 0.60 and self.hold_keys:
            k, acct, amount, ttl = rng.choice(self.hold_keys)
            return k, w.hold(acct, amount, k, ttl)
        if r < 0.85 and self.holds:
            hold_id, amount = rng.choice(self.holds)
            spend = rng.randint(0, amount + (amount // 10 if rng.random() < 0.1 else 0))
            return f"capture:{hold_id}", w.capture(hold_id, spend, reason="chat")
        if r < 0.97 and self.holds:
            hold_id, _ = rng.choice(self.holds)
            return f"void:{hold_id}", w.void(hold_id, reason="failed")
        return "sweep", w.sweep()

    async def run_batch(self) -> None:
        ops = [self.draw() for _ in range(BATCH)]
        results = await asyncio.gather(*(op for _, op in ops), return_exceptions=True)
        for (label, _), result in zip(ops, results, strict=True):
            if isinstance(result, REFUSALS):
                continue
            if isinstance(result, BaseException):
                raise AssertionError(f"seed {SEED}: {label} failed: {result!r}") from result
            if isinstance(result, billing.Hold) and label.startswith("hold-"):
                self.seen[label].add(result.id)
                self.holds.append((result.id, result.amount))
            elif isinstance(result, billing.Entry):
                self.seen[label].add(result.id)


@pytest.mark.slow
async def test_random_mix_keeps_every_balance_equal_to_its_ledger(store_url: str) -> None:
    wallet = await billing.open_wallet(store_url)
    try:
        mix = Mix(wallet, random.Random(SEED))
        for _ in range(OPERATIONS // BATCH):
            await mix.run_batch()

        replayed = {k: ids for k, ids in mix.seen.items() if len(ids) > 1}
        assert replayed == {}, f"seed {SEED}: a replayed key produced a second result"

        open_by_account: dict[str, int] = defaultdict(int)
        for h in await wallet.open_holds():
            open_by_account[h.account] += h.amount
        for acct in ACCOUNTS:
            b = await wallet.balance(acct)
            ledger = sum(e.amount for e in await wallet.entries(acct, limit=OPERATIONS * 2))
            assert b.total == ledger, f"seed {SEED}: {acct} total {b.total} != ledger {ledger}"
            assert b.held == open_by_account[acct], f"seed {SEED}: {acct} held mismatch"
            assert b.available >= 0
        assert set(ACCOUNTS) <= set(await wallet.accounts())

        # Everything still held expires in the end; nothing is spent by expiry.
        totals = {a: (await wallet.balance(a)).total for a in ACCOUNTS}
        await wallet.sweep(datetime.now(UTC) + timedelta(hours=1))
        assert await wallet.open_holds() == []
        for acct in ACCOUNTS:
            assert await wallet.balance(acct) == billing.Balance(acct, totals[acct], 0)
    finally:
        await wallet.close()
