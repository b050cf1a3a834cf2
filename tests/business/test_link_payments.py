"""/link racing the money that comes in: payments, retries, codes, held credits.

A payment is pinned to the payer's account before it is credited, so a retry credits the same
account. If that account is linked away meanwhile (between the pin and the credit, before a
retry, or while /link is half-way), the credits must still reach the wallet the payer now
uses: exactly once, with every balance equal to the sum of its ledger. Each scenario runs on
SQLite, PostgreSQL and Redis; interleavings are forced by pausing one side before its n-th
store or wallet call until the other side has finished.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from billing.wallet.base import Wallet
from bot.accounts import Accounts, LinkError
from bot.codes import CodeError, create_codes, redeem_code
from bot.store.keys import UNSETTLED
from tests.business.conftest import Bank

PAYMENT = 500_000
Hook = Callable[[int, str, tuple[Any, ...]], Awaitable[None]]


class Actor:
    """One side of a race: counts its store and wallet calls and may pause or fail at one."""

    def __init__(self, pause_at: int | None = None, before: Hook | None = None) -> None:
        self.calls = 0
        self.pause_at = pause_at
        self.before = before  # runs before each call (may raise: a dropped connection)
        self.after: Hook | None = None  # runs after each call (may raise: a lost answer)
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    def wrap(self, inner: Any) -> Any:
        return _Seen(inner, self)

    def accounts(self, bank: Bank) -> Accounts:
        return Accounts(self.wrap(bank.store), self.wrap(bank.wallet))

    async def step(self, name: str, args: tuple[Any, ...]) -> None:
        self.calls += 1
        if self.calls == self.pause_at:
            self.paused.set()
            await self.go.wait()
        if self.before is not None:
            await self.before(self.calls, name, args)


class _Seen:
    """A store or wallet whose coroutine methods go through an Actor first."""

    def __init__(self, inner: Any, actor: Actor) -> None:
        self._inner = inner
        self._actor = actor

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kw: Any) -> Any:
            await self._actor.step(name, args)
            result = await attr(*args, **kw)
            if self._actor.after is not None:
                await self._actor.after(self._actor.calls, name, args)
            return result

        return call


async def ledger_sum(wallet: Wallet, account: str) -> int:
    return sum(e.amount for e in await wallet.entries(account, limit=10_000))


async def snapshot(wallet: Wallet, *accounts: str) -> dict[str, tuple[int, int, int]]:
    """Each account's total, held and number of ledger entries."""
    out = {}
    for account in accounts:
        b = await wallet.balance(account)
        out[account] = (b.total, b.held, len(await wallet.entries(account, limit=10_000)))
    return out


async def assert_consistent(wallet: Wallet, *accounts: str) -> None:
    for account in accounts:
        b = await wallet.balance(account)
        assert b.total == await ledger_sum(wallet, account), account
        assert b.held == 0, account


async def credited_once(wallet: Wallet, key: str, *accounts: str) -> None:
    """The payment `key` is in exactly one ledger, once."""
    found = [e for a in accounts for e in await wallet.entries(a, limit=10_000) if e.key == key]
    assert len(found) == 1, found


async def until_paused_or_done(actor: Actor, task: asyncio.Task[Any]) -> bool:
    """True if `actor` reached its pause point, False if its task finished first."""
    waiter = asyncio.ensure_future(actor.paused.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return actor.paused.is_set()


# --- the reviewer's scenario: a payment retried after a /link ---------------------------------


async def test_payment_retried_after_a_link_reaches_the_linked_wallet(bank: Bank) -> None:
    acc = Accounts(bank.store, bank.wallet)
    await bank.wallet.credit("telegram:7", 1000, "seed", "seed")
    real_credit = bank.wallet.credit
    fails = {"n": 1}

    async def flaky(account: str, amount: int, key: str, reason: str, **kw: Any) -> Any:
        if key == "wxpay:X" and fails["n"]:
            fails["n"] -= 1
            raise ConnectionError("wallet blip")
        return await real_credit(account, amount, key, reason, **kw)

    bank.wallet.credit = flaky  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionError):
            await acc.credit_payment("wechat", "42", PAYMENT, key="wxpay:X", reason="pay")
        await acc.link("wechat", "42", await acc.new_link_code("telegram:7"))
        entry = await acc.credit_payment("wechat", "42", PAYMENT, key="wxpay:X", reason="pay")
    finally:
        del bank.wallet.credit
    payer = await acc.resolve("wechat", "42")
    assert payer == "telegram:7"
    assert (await bank.wallet.balance(payer)).total == 1000 + PAYMENT
    assert (await bank.wallet.balance("wechat:42")).total == 0
    # The payment's own entry stays where it was pinned (a reversal finds it there) and is
    # followed by the move, which names it.
    assert entry.account == "wechat:42" and entry.key == "wxpay:X"
    [out] = [e for e in await bank.wallet.entries("wechat:42") if e.amount < 0]
    assert (out.amount, out.reason, out.meta["to"]) == (-PAYMENT, "moved to linked wallet", payer)
    [moved_in] = [e for e in await bank.wallet.entries(payer) if e.ref == out.id]
    assert moved_in.amount == PAYMENT
    await assert_consistent(bank.wallet, "wechat:42", payer)
    # Replayed again (a late notification, reconciliation, the operator): nothing changes.
    before = await snapshot(bank.wallet, "wechat:42", payer)
    await acc.credit_payment("wechat", "42", PAYMENT, key="wxpay:X", reason="pay")
    assert await snapshot(bank.wallet, "wechat:42", payer) == before


async def test_payment_whose_move_was_cut_is_finished_once_by_its_retry(bank: Bank) -> None:
    """The credit lands on the linked-away account, then the move's credit fails: the
    payment is reported credited (its retry must not look needed), the account stays listed
    for the sweeper, and the payment's retry finishes that move (no second debit)."""
    acc = Accounts(bank.store, bank.wallet)
    await acc.link("wechat", "5", await acc.new_link_code("telegram:5"))
    await bank.store.set("payacct:tgstars:c1", "wechat:5")  # pinned before the link
    cut = Actor()

    async def lose_the_move(n: int, name: str, args: tuple[Any, ...]) -> None:
        if name == "credit" and str(args[2]).startswith("drain:") and cut.before is not None:
            cut.before = None
            raise ConnectionError("connection lost")

    cut.before = lose_the_move
    entry = await cut.accounts(bank).credit_payment(
        "wechat", "5", PAYMENT, key="tgstars:c1", reason="Telegram Stars"
    )
    assert (entry.account, entry.key, entry.amount) == ("wechat:5", "tgstars:c1", PAYMENT)
    assert cut.before is None  # the move's credit did fail
    assert (await bank.wallet.balance("wechat:5")).total == 0  # debited, not yet credited
    assert await bank.store.smembers(UNSETTLED) == {"wechat:5"}  # the sweeper would finish it
    await acc.credit_payment("wechat", "5", PAYMENT, key="tgstars:c1", reason="Telegram Stars")
    assert (await bank.wallet.balance("telegram:5")).total == PAYMENT
    debits = [e for e in await bank.wallet.entries("wechat:5") if e.amount < 0]
    assert len(debits) == 1
    await assert_consistent(bank.wallet, "wechat:5", "telegram:5")
    assert await acc.settle_listed() == 0
    assert await bank.store.smembers(UNSETTLED) == set()


async def test_a_move_cancelled_between_debit_and_credit_is_finished_by_the_sweeper(
    bank: Bank,
) -> None:
    """The task crediting a payment is cancelled (or the process killed) right after the
    move's debit: the money is in no balance until the sweeper's pass, which moves it on to
    the linked wallet, once."""
    acc = Accounts(bank.store, bank.wallet)
    await acc.link("wechat", "k", await acc.new_link_code("telegram:k"))
    await bank.store.set("payacct:wxpay:k1", "wechat:k")  # pinned before the link
    stuck = Actor()
    debited = asyncio.Event()

    async def hang_after_the_move_debit(n: int, name: str, args: tuple[Any, ...]) -> None:
        if name == "debit" and str(args[2]).startswith("drain:"):
            debited.set()
            await asyncio.Event().wait()  # until cancelled

    stuck.after = hang_after_the_move_debit
    task = asyncio.ensure_future(
        stuck.accounts(bank).credit_payment("wechat", "k", PAYMENT, key="wxpay:k1", reason="p")
    )
    await asyncio.wait_for(debited.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await bank.wallet.balance("wechat:k")).total == 0  # debited ...
    assert (await bank.wallet.balance("telegram:k")).total == 0  # ... and not yet credited
    assert await acc.settle_listed() == 0
    assert (await bank.wallet.balance("telegram:k")).total == PAYMENT
    assert (await bank.wallet.balance("wechat:k")).total == 0
    await credited_once(bank.wallet, "wxpay:k1", "wechat:k", "telegram:k")
    moved_in = [e for e in await bank.wallet.entries("telegram:k") if e.key.startswith("drain:")]
    assert [e.amount for e in moved_in] == [PAYMENT]
    await assert_consistent(bank.wallet, "wechat:k", "telegram:k")
    assert await bank.store.smembers(UNSETTLED) == set()
    before = await snapshot(bank.wallet, "wechat:k", "telegram:k")
    assert await acc.settle_listed() == 0  # another pass: nothing more moves
    assert await snapshot(bank.wallet, "wechat:k", "telegram:k") == before


async def test_a_grant_whose_move_fails_is_granted_once_and_finished_by_the_sweeper(
    bank: Bank, caplog: pytest.LogCaptureFixture
) -> None:
    """/grant to an account linked away meanwhile: the grant is done when the move after it
    fails, so it is reported done (a retry without a key would grant twice); the sweeper
    moves it."""
    acc = Accounts(bank.store, bank.wallet)
    await acc.link("wechat", "g", await acc.new_link_code("telegram:g"))

    async def store_down(n: int, name: str, args: tuple[Any, ...]) -> None:
        if name == "get":  # the settle's first read of the links
            raise ConnectionError("store unreachable")

    flaky = Accounts(Actor(before=store_down).wrap(bank.store), bank.wallet)
    with caplog.at_level("WARNING", logger="bot.accounts"):
        entry = await flaky.credit("wechat:g", 3000, "admin:grant:g1", "grant")
    assert (entry.account, entry.amount) == ("wechat:g", 3000)
    assert "sweeper will finish it" in caplog.text
    assert await bank.store.smembers(UNSETTLED) == {"wechat:g"}
    assert await acc.settle_listed() == 0
    assert (await bank.wallet.balance("telegram:g")).total == 3000
    assert (await bank.wallet.balance("wechat:g")).total == 0
    await assert_consistent(bank.wallet, "wechat:g", "telegram:g")


async def test_one_failing_account_does_not_stop_the_sweepers_pass(bank: Bank) -> None:
    acc = Accounts(bank.store, bank.wallet)
    for who in ("a", "b"):
        await acc.link("wechat", f"u{who}", await acc.new_link_code(f"telegram:u{who}"))
        await bank.wallet.credit(f"wechat:u{who}", 700, f"stray:{who}", "stray")
        await bank.store.sadd(UNSETTLED, f"wechat:u{who}")

    async def first_fails(n: int, name: str, args: tuple[Any, ...]) -> None:
        if args and args[0] == "wechat:ua":  # sorted first
            raise ConnectionError("connection lost")

    sweeper = Accounts(bank.store, Actor(before=first_fails).wrap(bank.wallet))
    assert await sweeper.settle_listed() == 1  # wechat:ua stays listed for the next pass
    assert (await bank.wallet.balance("telegram:ub")).total == 700
    assert await bank.store.smembers(UNSETTLED) == {"wechat:ua"}
    assert await acc.settle_listed() == 0
    assert (await bank.wallet.balance("telegram:ua")).total == 700
    await assert_consistent(bank.wallet, "wechat:ua", "telegram:ua", "wechat:ub", "telegram:ub")


# --- a /link racing a payment, every way round --------------------------------------------------


async def _link_vs_payment(bank: Bank, n: int, pausing: str, k: int) -> bool:
    """One race on fresh identities: `pausing` ("link" or "pay") stops before its k-th call
    until the other has finished. Returns False once k is past the pausing side's calls."""
    tg, wx, key = f"telegram:t{n}", f"wechat:w{n}", f"wxpay:race{n}"
    plain = Accounts(bank.store, bank.wallet)
    await bank.wallet.credit(tg, 1000, "seed", "seed")
    await bank.wallet.credit(wx, 2000, "seed", "seed")
    code = await plain.new_link_code(tg)
    link_side = Actor(pause_at=k if pausing == "link" else None)
    pay_side = Actor(pause_at=k if pausing == "pay" else None)

    def do_link() -> Awaitable[Any]:
        return link_side.accounts(bank).link("wechat", f"w{n}", code)

    def do_pay() -> Awaitable[Any]:
        acc = pay_side.accounts(bank)
        return acc.credit_payment("wechat", f"w{n}", PAYMENT, key=key, reason="WeChat Pay")

    first, other, actor = (
        (do_link, do_pay, link_side)
        if pausing == "link"
        else (
            do_pay,
            do_link,
            pay_side,
        )
    )
    task = asyncio.ensure_future(first())
    reached = await until_paused_or_done(actor, task)
    await other()
    actor.go.set()
    await task
    assert await plain.resolve("wechat", f"w{n}") == tg, (pausing, k)
    assert (await bank.wallet.balance(tg)).total == 1000 + 2000 + PAYMENT, (pausing, k)
    assert (await bank.wallet.balance(wx)).total == 0, (pausing, k)
    await credited_once(bank.wallet, key, tg, wx)
    await assert_consistent(bank.wallet, tg, wx)
    # The payment replayed after all of it: nothing changes.
    before = await snapshot(bank.wallet, tg, wx)
    await plain.credit_payment("wechat", f"w{n}", PAYMENT, key=key, reason="WeChat Pay")
    assert await snapshot(bank.wallet, tg, wx) == before, (pausing, k)
    return reached


async def test_link_racing_a_payment_credits_it_once_to_the_linked_wallet(bank: Bank) -> None:
    n = 0
    for pausing in ("pay", "link"):
        for k in range(1, 60):
            n += 1
            if not await _link_vs_payment(bank, n, pausing, k):
                break
        else:
            raise AssertionError(f"{pausing} never finished before its pause point")


@pytest.mark.slow
async def test_link_and_payments_with_random_timing(bank: Bank) -> None:
    """Several payments and a link at once, each call after a random short delay."""
    rng = random.Random(7)
    plain = Accounts(bank.store, bank.wallet)
    for n in range(12):
        tg, wx = f"telegram:r{n}", f"wechat:r{n}"
        await bank.wallet.credit(wx, 3000, "seed", "seed")
        code = await plain.new_link_code(tg)

        async def jitter(_n: int, _name: str, _args: tuple[Any, ...]) -> None:
            await asyncio.sleep(rng.random() * 0.003)

        def side() -> Accounts:
            return Actor(before=jitter).accounts(bank)

        keys = [f"wxpay:rand{n}:{i}" for i in range(3)]
        jobs: list[Awaitable[Any]] = [side().link("wechat", f"r{n}", code)]
        jobs += [side().credit_payment("wechat", f"r{n}", PAYMENT, key=k, reason="p") for k in keys]
        await asyncio.gather(*jobs)
        assert await plain.resolve("wechat", f"r{n}") == tg
        assert (await bank.wallet.balance(tg)).total == 3000 + 3 * PAYMENT, n
        assert (await bank.wallet.balance(wx)).total == 0, n
        for k in keys:
            await credited_once(bank.wallet, k, tg, wx)
        await assert_consistent(bank.wallet, tg, wx)


async def test_two_payments_moving_from_one_linked_away_account_move_each_once(
    bank: Bank,
) -> None:
    """Two payments pinned to the old account before the link are retried at once: their
    moves race on the same balance (same state, same key) and every credit arrives once."""
    n = 0
    for k in range(1, 60):
        n += 1
        tg, wx = f"telegram:d{n}", f"wechat:d{n}"
        plain = Accounts(bank.store, bank.wallet)
        await plain.link("wechat", f"d{n}", await plain.new_link_code(tg))
        for i in (1, 2):
            await bank.store.set(f"payacct:wxpay:d{n}:{i}", wx)
        first, second = Actor(pause_at=k), Actor()
        task = asyncio.ensure_future(
            first.accounts(bank).credit_payment(
                "wechat", f"d{n}", 1000, key=f"wxpay:d{n}:1", reason="p"
            )
        )
        reached = await until_paused_or_done(first, task)
        await second.accounts(bank).credit_payment(
            "wechat", f"d{n}", 20, key=f"wxpay:d{n}:2", reason="p"
        )
        first.go.set()
        await task
        assert (await bank.wallet.balance(tg)).total == 1020, k
        assert (await bank.wallet.balance(wx)).total == 0, k
        await assert_consistent(bank.wallet, tg, wx)
        if not reached:
            return
    raise AssertionError("the first payment never finished before its pause point")


# --- a /link that fails half-way and is retried -------------------------------------------------


async def _failing_link(bank: Bank, n: int, k: int, lose_answer: bool) -> bool:
    """A link whose k-th call fails (before it runs, or after: the answer lost), with a
    payment landing on the old account after the plan read its balance; then the retry."""
    tg, wx = f"telegram:f{n}", f"wechat:f{n}"
    plain = Accounts(bank.store, bank.wallet)
    await bank.wallet.credit(tg, 1000, "seed", "seed")
    await bank.wallet.credit(wx, 2000, "seed", "seed")
    code = await plain.new_link_code(tg)
    actor = Actor()
    state = {"paid": False, "failed": False}

    async def stray_then_fail(i: int, name: str, args: tuple[Any, ...]) -> None:
        if name == "debit" and not state["paid"]:  # the plan has read the balance
            state["paid"] = True
            await plain.credit_payment("wechat", f"f{n}", PAYMENT, key=f"wxpay:f{n}", reason="p")
        if i == k and not state["failed"]:
            state["failed"] = True
            raise ConnectionError("connection lost")

    if lose_answer:
        actor.after = stray_then_fail
        actor.before = lambda i, name, args: stray_then_fail(-1, name, args)
    else:
        actor.before = stray_then_fail
    try:
        await actor.accounts(bank).link("wechat", f"f{n}", code)
    except ConnectionError:
        pass
    if not state["failed"]:
        return False
    # The user sends the same /link CODE again (the payment lands now if it did not yet).
    state["failed"] = True
    await Actor(before=stray_then_fail).accounts(bank).link("wechat", f"f{n}", code)
    assert state["paid"]
    expect = {tg: 1000 + 2000 + PAYMENT, wx: 0}
    assert {a: (await bank.wallet.balance(a)).total for a in expect} == expect, (k, lose_answer)
    await assert_consistent(bank.wallet, tg, wx)
    await credited_once(bank.wallet, f"wxpay:f{n}", tg, wx)
    before = await snapshot(bank.wallet, tg, wx)
    assert await plain.link("wechat", f"f{n}", code) == (tg, 2000)  # once more: no move
    assert await snapshot(bank.wallet, tg, wx) == before
    return True


@pytest.mark.slow
async def test_link_retried_after_failing_anywhere_moves_nothing_twice(bank: Bank) -> None:
    n = 0
    for lose_answer in (False, True):
        for k in range(1, 60):
            n += 1
            if not await _failing_link(bank, n, k, lose_answer):
                break
        else:
            raise AssertionError("the link never finished before its failure point")


# --- holds, codes, chains -----------------------------------------------------------------------


async def test_a_reply_started_after_the_plan_makes_link_busy_not_stuck(bank: Bank) -> None:
    acc = Accounts(bank.store, bank.wallet)
    await bank.wallet.credit("wechat:h", 2000, "seed", "seed")
    code = await acc.new_link_code("telegram:h")
    holds: list[Any] = []

    async def reply_starts(i: int, name: str, args: tuple[Any, ...]) -> None:
        if name == "debit" and not holds:  # a chat message on WeChat, just after the plan
            holds.append(await bank.wallet.hold("wechat:h", 500, "chat:1", ttl=60))

    with pytest.raises(LinkError) as refused:
        await Actor(before=reply_starts).accounts(bank).link("wechat", "h", code)
    assert refused.value.kind == "busy"
    assert await acc.resolve("wechat", "h") == "wechat:h"  # nothing moved, nothing re-pointed
    await bank.wallet.capture(holds[0].id, 300, reason="chat")
    _, moved = await acc.link("wechat", "h", code)  # the same code once the reply is done
    assert moved == 1700
    assert (await bank.wallet.balance("telegram:h")).total == 1700
    assert (await bank.wallet.balance("wechat:h")).total == 0
    await assert_consistent(bank.wallet, "wechat:h", "telegram:h")


async def test_held_credits_left_on_a_linked_away_account_follow_once_released(
    bank: Bank,
) -> None:
    """A reply that began on the old account just before the re-pointing holds credits a
    payment brought there; the sweeper's pass moves them once the hold is voided."""
    acc = Accounts(bank.store, bank.wallet)
    await acc.link("wechat", "s", await acc.new_link_code("telegram:s"))
    await bank.store.set("payacct:wxpay:s1", "wechat:s")
    await bank.wallet.credit("wechat:s", 100, "stray", "stray")
    hold = await bank.wallet.hold("wechat:s", 60, "chat:2", ttl=60)
    await acc.credit_payment("wechat", "s", PAYMENT, key="wxpay:s1", reason="p")
    assert (await bank.wallet.balance("telegram:s")).total == PAYMENT + 40
    assert await bank.store.smembers(UNSETTLED) == {"wechat:s"}
    assert await acc.settle_listed() == 1  # still held: stays listed
    await bank.wallet.void(hold.id)
    assert await acc.settle_listed() == 0
    assert (await bank.wallet.balance("telegram:s")).total == PAYMENT + 100
    assert await bank.store.smembers(UNSETTLED) == set()
    await assert_consistent(bank.wallet, "wechat:s", "telegram:s")


async def test_a_code_redeemed_again_after_a_link_is_credited_once(bank: Bank) -> None:
    """A crash between claiming a code and crediting it, then /link, then the user retries
    the code: it is credited (not refused as used by someone else), once, to the linked
    wallet."""
    acc = Accounts(bank.store, bank.wallet)
    [made] = await create_codes(bank.store, 5_000_000, 1)
    real_credit = bank.wallet.credit

    async def crash(*args: Any, **kw: Any) -> Any:
        raise ConnectionError("crashed before the credit")

    bank.wallet.credit = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionError):
            await redeem_code(bank.wallet, bank.store, "wechat:c", made.code, user_key="wechat:c")
    finally:
        bank.wallet.credit = real_credit  # type: ignore[method-assign]
    await acc.link("wechat", "c", await acc.new_link_code("telegram:c"))
    account = await acc.resolve("wechat", "c")
    got = await redeem_code(bank.wallet, bank.store, account, made.code, user_key="wechat:c")
    assert got == 5_000_000
    assert (await bank.wallet.balance("telegram:c")).total == 5_000_000
    assert (await bank.wallet.balance("wechat:c")).total == 0
    with pytest.raises(CodeError) as used:
        await redeem_code(bank.wallet, bank.store, account, made.code, user_key="wechat:c")
    assert used.value.kind == "used"
    with pytest.raises(CodeError):  # and nobody else can take it
        await redeem_code(bank.wallet, bank.store, "telegram:z", made.code, user_key="tg:z")
    assert (await bank.wallet.balance("telegram:c")).total == 5_000_000
    await assert_consistent(bank.wallet, "wechat:c", "telegram:c")


async def test_a_code_made_before_its_wallet_was_linked_away_joins_where_it_went(
    bank: Bank,
) -> None:
    acc = Accounts(bank.store, bank.wallet)
    stale = await acc.new_link_code("telegram:a")  # Telegram a asks for a code ...
    await acc.link("telegram", "a", await acc.new_link_code("console:a"))  # ... then moves
    await bank.wallet.credit("wechat:a", 700, "seed", "seed")
    account, moved = await acc.link("wechat", "a", stale)
    assert (account, moved) == ("console:a", 700)
    for ident in ("telegram", "wechat", "console"):
        assert await acc.resolve(ident, "a") == "console:a"
    assert (await bank.wallet.balance("console:a")).total == 700


@pytest.mark.slow
async def test_two_links_at_once_leave_nobody_on_an_emptied_wallet(bank: Bank) -> None:
    """WeChat joins Telegram's wallet while Telegram joins the console's: whatever the
    interleaving, all three end on the console's wallet with every credit."""
    n = 0
    for pausing in ("into", "away"):
        for k in range(1, 60):
            n += 1
            tg, wx, con = f"telegram:l{n}", f"wechat:l{n}", f"console:l{n}"
            plain = Accounts(bank.store, bank.wallet)
            for account, amount in ((tg, 100), (wx, 20), (con, 3)):
                await bank.wallet.credit(account, amount, "seed", "seed")
            into_code = await plain.new_link_code(tg)
            away_code = await plain.new_link_code(con)
            into, away = Actor(), Actor()
            (into if pausing == "into" else away).pause_at = k
            jobs = {
                "into": into.accounts(bank).link("wechat", f"l{n}", into_code),
                "away": away.accounts(bank).link("telegram", f"l{n}", away_code),
            }
            actor = into if pausing == "into" else away
            task = asyncio.ensure_future(jobs[pausing])
            reached = await until_paused_or_done(actor, task)
            await jobs["away" if pausing == "into" else "into"]
            actor.go.set()
            await task
            for ident in (tg, wx, con):
                platform, user = ident.split(":")
                assert await plain.resolve(platform, user) == con, (pausing, k, ident)
            assert (await bank.wallet.balance(con)).total == 123, (pausing, k)
            await assert_consistent(bank.wallet, tg, wx, con)
            if not reached:
                break


async def test_a_reversal_retried_after_a_link_takes_the_payment_from_where_it_moved(
    bank: Bank,
) -> None:
    """A payment's reversal fails before taking anything (pinned to the payer's account),
    then the payer /link-s and the money moves: the retry takes it back from the linked
    wallet, once, instead of being refused forever."""
    from bot.assemble import assemble
    from bot.settings import Settings

    state = {"down": True}

    async def first_try_fails(n: int, name: str, args: tuple[Any, ...]) -> None:
        if name == "debit" and str(args[2]).startswith("reverse:") and state["down"]:
            state["down"] = False
            raise ConnectionError("connection lost")

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, wallet_url=bank.url, openai_api_key="sk-test", mj_base_url=""
    )
    wallet = Actor(before=first_try_fails).wrap(bank.wallet)
    core = await assemble(settings, wallet=wallet, store=bank.store, openai=object())
    try:
        paid = await core.credit_payment("wechat", "rv", PAYMENT, key="stars:rv", reason="p")
        with pytest.raises(ConnectionError):
            await core.reverse_payment("stars:rv", reason="refunded")
        acc = Accounts(bank.store, bank.wallet)
        await acc.link("wechat", "rv", await acc.new_link_code("telegram:rv"))
        assert (await bank.wallet.balance("telegram:rv")).total == PAYMENT  # it moved
        reversal = await core.reverse_payment("stars:rv", reason="refunded")
        assert (reversal.account, reversal.amount, reversal.ref) == (
            "telegram:rv",
            -PAYMENT,
            paid.id,
        )
        again = await core.reverse_payment("stars:rv", reason="refunded")
        assert again.id == reversal.id
    finally:
        await core.close()
    for account in ("wechat:rv", "telegram:rv"):
        assert (await bank.wallet.balance(account)).total == 0
    await assert_consistent(bank.wallet, "wechat:rv", "telegram:rv")
