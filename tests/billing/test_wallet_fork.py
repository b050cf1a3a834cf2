"""A process that opens the wallet (or the bot's store) and then forks workers.

multiprocessing's default start method on Linux and pre-fork servers do exactly this. The
children inherit the parent's wallet object, its SQLite writer and its connection pools, but
none of their threads and none of the parent's connections may be used there: each child must
find them reset and work on its own, and the parent must go on as before.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid

import pytest

import billing
from billing import Wallet
from bot.store import open_store
from bot.store.base import Store

WORKERS = 4
HOLDS = 25  # per worker
UNIT = 1_000
JOIN_TIMEOUT = 60


def _work(wallet: Wallet, store: Store | None, account: str, worker: int) -> None:
    """A forked worker: place its holds on the inherited wallet, capture one, read back."""

    async def main() -> None:
        holds = await asyncio.gather(
            *(wallet.hold(account, UNIT, f"w{worker}-{i}", 600) for i in range(HOLDS))
        )
        await wallet.capture(holds[0].id, UNIT // 2, reason="forked worker")
        assert (await wallet.get_hold(holds[-1].id)).amount == UNIT
        assert (await wallet.balance(account)).held >= (HOLDS - 1) * UNIT
        if store is not None:
            assert await store.add(f"fork:{worker}", "1")
            assert await store.get(f"fork:{worker}") == "1"

    asyncio.run(asyncio.wait_for(main(), JOIN_TIMEOUT / 2))


async def _fork_workers(wallet: Wallet, store: Store | None, account: str) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_work, args=(wallet, store, account, w), daemon=True)
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    loop = asyncio.get_running_loop()
    try:
        for p in procs:
            await loop.run_in_executor(None, p.join, JOIN_TIMEOUT)
        stuck = [p.pid for p in procs if p.is_alive()]
        assert not stuck, f"forked workers hung: {stuck}"
        assert [p.exitcode for p in procs] == [0] * WORKERS
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def fork_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


async def test_workers_forked_after_open_place_their_holds(fork_url: str) -> None:
    wallet = await billing.open_wallet(fork_url)
    store = await open_store(fork_url)
    try:
        account = f"tg:{uuid.uuid4().hex[:8]}"
        await wallet.credit(account, 1_000_000, "topup", "top-up")
        # Every connection in use before the fork: the writer threads, the read pools, the
        # PostgreSQL fast lane's own connections, the Redis pools.
        h = await wallet.hold(account, UNIT, "parent-before-fork", 600)
        await wallet.void(h.id)
        assert (await wallet.balance(account)).held == 0
        await store.set("before-fork", "1")
        await _fork_workers(wallet, store, account)

        # Every worker's holds and capture landed, and the ledger still sums to the total.
        b = await wallet.balance(account)
        spent = WORKERS * (UNIT // 2)
        assert b.total == 1_000_000 - spent
        assert b.held == WORKERS * (HOLDS - 1) * UNIT
        assert len(await wallet.open_holds()) == WORKERS * (HOLDS - 1)
        assert sum(e.amount for e in await wallet.entries(account, limit=1000)) == b.total
        assert [await store.get(f"fork:{w}") for w in range(WORKERS)] == ["1"] * WORKERS
        # The parent's own wallet and store go on working after the fork.
        h = await wallet.hold(account, UNIT, "parent-after-fork", 600)
        await wallet.void(h.id)
        assert await store.get("before-fork") == "1"
    finally:
        await store.close()
        await wallet.close()
