"""Commands: balance, usage, models, /link, /topup codes and the admin commands."""

from __future__ import annotations

import pytest

from billing.tokens import count_text
from bot.core import Core
from bot.events import FinalText, Notice
from bot.i18n import keys
from tests.core.conftest import (
    PRICES,
    MakeCore,
    ask,
    captures,
    credits_of,
    fund,
    of_type,
    prompt_tokens,
)

ACCOUNT = "telegram:u1"


def test_every_text_exists_in_english_and_chinese() -> None:
    assert keys("en") == keys("zh")


async def test_balance_and_usage_let_a_user_recompute_each_charge(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    text = "hello [[tokens:25]]"
    await ask(core, text)
    cost = PRICES.chat_cost("gpt-3.5-turbo", prompt_tokens("gpt-3.5-turbo", text), 25)
    left = 100_000 - cost
    [balance] = await ask(core, "/balance")
    assert f"Available: {left / 1000:g} credits" in balance.text
    assert f"Spent today (UTC): {cost / 1000:g} credits" in balance.text
    [usage] = await ask(core, "/usage")
    [entry] = await captures(core, ACCOUNT)
    line = (
        f"gpt-3.5-turbo: {prompt_tokens('gpt-3.5-turbo', text)} prompt + 25 completion tokens "
        f"× 40 / 40 credits per 1K = {cost / 1000:g} credits"
    )
    assert line in usage.text and f"#{entry.id}" in usage.text


async def test_chinese_users_get_chinese(core: Core) -> None:
    await fund(core, ACCOUNT, 7)
    [balance] = await ask(core, "/balance", language="zh-hans")
    assert "可用：7 积分（约 ¥0.0007）" in balance.text
    [unknown] = await ask(core, "/nonsense", language="zh")
    assert "未知命令" in unknown.text
    [help_text] = await ask(core, "/help")
    assert "/imagine" in help_text.text and "2000 credits" in help_text.text


async def test_model_switch_and_refusal_of_unpriced_models(core: Core) -> None:
    [refused] = await ask(core, "/model gpt-4-32k")
    assert isinstance(refused, Notice) and "not available" in refused.text
    [listing] = await ask(core, "/model")
    assert "• gpt-3.5-turbo: 40 / 40" in listing.text and "gpt-4: 2310 / 4260" in listing.text
    assert "gpt-4-32k" not in listing.text
    [switched] = await ask(core, "/model gpt-4")
    assert isinstance(switched, FinalText) and "gpt-4" in switched.text
    await fund(core, ACCOUNT, 1000)
    text = "hi [[tokens:5]]"
    await ask(core, text)
    [entry] = await captures(core, ACCOUNT)
    assert entry.meta["model"] == "gpt-4"
    assert entry.amount == -PRICES.chat_cost("gpt-4", prompt_tokens("gpt-4", text), 5)
    [prices] = await ask(core, "/price")
    assert "imagine: 2000" in prices.text


async def test_new_forgets_the_conversation(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    await ask(core, "remember this [[tokens:5]]")
    await ask(core, "/new")
    text = "fresh [[tokens:5]]"
    await ask(core, text)
    latest = (await captures(core, ACCOUNT))[0]
    assert latest.meta["prompt_tokens"] == prompt_tokens("gpt-3.5-turbo", text)


async def test_link_joins_a_second_platform_to_one_wallet(core: Core) -> None:
    await fund(core, ACCOUNT, 50)
    await fund(core, "wechat:oW1", 5)
    [code_msg] = await ask(core, "/link")
    code = code_msg.text.split("\n")[0].rsplit(" ", 1)[1]
    [linked] = await ask(core, f"/link {code}", user="oW1", platform="wechat")
    assert "5 credits" in linked.text and "55 credits available" in linked.text
    assert (await core.wallet.balance("wechat:oW1")).total == 0
    # WeChat now spends the shared wallet.
    text = "from wechat [[tokens:9]]"
    await ask(core, text, user="oW1", platform="wechat")
    cost = PRICES.chat_cost("gpt-3.5-turbo", prompt_tokens("gpt-3.5-turbo", text), 9)
    assert (await core.wallet.balance(ACCOUNT)).total == 55_000 - cost
    # A code works once.
    [again] = await ask(core, f"/link {code}", user="oW2", platform="wechat")
    assert isinstance(again, Notice) and "not valid" in again.text


class FailingCreditOnce:
    """The wallet as the link sees it, whose next credit fails (a dropped connection)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def credit(self, *args: object, **kw: object) -> object:
        if self.armed:
            self.armed = False
            raise ConnectionError("connection lost")
        return await self.inner.credit(*args, **kw)


async def test_link_interrupted_between_debit_and_credit_is_finished_by_a_retry(
    core: Core,
) -> None:
    await fund(core, "wechat:bob", 50)
    accounts = core.services.accounts
    code = await accounts.new_link_code(ACCOUNT)
    accounts.wallet = FailingCreditOnce(accounts.wallet)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await ask(core, f"/link {code}", user="bob", platform="wechat")
    assert (await core.wallet.balance("wechat:bob")).total == 0  # debited, not yet credited
    # The user retries with the same code: the move completes, once.
    [linked] = await ask(core, f"/link {code.lower()}", user="bob", platform="wechat")
    assert "50 credits" in linked.text
    [again] = await ask(core, f"/link {code}", user="bob", platform="wechat")
    assert isinstance(again, FinalText)
    assert (await core.wallet.balance("wechat:bob")).total == 0
    assert (await core.wallet.balance(ACCOUNT)).total == 50_000
    assert await core.account_of("wechat", "bob") == ACCOUNT
    # The code is spent: nobody else can use it.
    [other] = await ask(core, f"/link {code}", user="eve", platform="wechat")
    assert isinstance(other, Notice) and "not valid" in other.text


async def test_link_takes_every_identity_of_the_old_wallet_along(core: Core) -> None:
    await fund(core, "telegram:carol", 20)
    [code_msg] = await ask(core, "/link", user="carol")
    code = code_msg.text.split("\n")[0].rsplit(" ", 1)[1]
    await ask(core, f"/link {code}", user="carol", platform="wechat")
    assert await core.account_of("wechat", "carol") == "telegram:carol"
    # carol's Telegram joins the console wallet: her WeChat, which paid from the Telegram
    # wallet (now emptied), follows instead of being stranded.
    await fund(core, "console:carol", 1)
    [code_msg] = await ask(core, "/link", user="carol", platform="console")
    code = code_msg.text.split("\n")[0].rsplit(" ", 1)[1]
    [linked] = await ask(core, f"/link {code}", user="carol")
    assert "20 credits" in linked.text
    for platform in ("telegram", "wechat", "console"):
        assert await core.account_of(platform, "carol") == "console:carol"
    assert (await core.wallet.balance("console:carol")).total == 21_000


async def test_refunds_and_grants_reach_a_user_who_linked_since(
    make_core: MakeCore, store_url: str
) -> None:
    """A refund of a charge made before /link, and a /grant whose account was looked up just
    before the user linked, land in the wallet the user pays from now (every backend)."""
    core = await make_core(store_url)
    await fund(core, "wechat:dan", 10)
    await ask(core, "hi [[tokens:5]]", user="dan", platform="wechat")
    [charge] = await captures(core, "wechat:dan")
    [code_msg] = await ask(core, "/link", user="dan")
    code = code_msg.text.split("\n")[0].rsplit(" ", 1)[1]
    await ask(core, f"/link {code}", user="dan", platform="wechat")
    [done] = await ask(core, f"/refund {charge.id}", user="admin")
    assert isinstance(done, FinalText)
    assert (await core.wallet.balance("telegram:dan")).total == 10_000
    # The grant's account is looked up, then the user links, then the grant is credited.
    accounts = core.services.accounts
    looked_up = accounts.resolve_name

    async def resolve_then_link(name: str) -> str:
        account = await looked_up(name)
        await accounts.link("telegram", "dan", await accounts.new_link_code("console:dan"))
        return account

    accounts.resolve_name = resolve_then_link  # type: ignore[method-assign]
    [granted] = await ask(core, "/grant telegram:dan 2", user="admin")
    assert "Granted 2 credits to console:dan" in granted.text
    assert (await core.wallet.balance("console:dan")).total == 12_000
    for account in ("wechat:dan", "telegram:dan"):
        assert (await core.wallet.balance(account)).total == 0


async def test_a_payment_refunded_after_the_payer_linked_is_taken_back_once(
    make_core: MakeCore, store_url: str
) -> None:
    """The payment's credits followed the payer to the linked wallet: its reversal takes
    them from there, and a retry takes nothing more."""
    core = await make_core(store_url)
    entry = await core.credit_payment("wechat", "fay", 9_000, key="stars:f1", reason="stars")
    accounts = core.services.accounts
    await accounts.link("wechat", "fay", await accounts.new_link_code("telegram:fay"))
    await fund(core, "telegram:fay", 4)
    reversal = await core.reverse_payment("stars:f1", reason="refunded")
    assert (reversal.account, reversal.amount, reversal.ref) == ("telegram:fay", -9_000, entry.id)
    again = await core.reverse_payment("stars:f1", reason="refunded")
    assert again.id == reversal.id
    assert (await core.wallet.balance("telegram:fay")).total == 4_000
    assert (await core.wallet.balance("wechat:fay")).total == 0


async def test_the_sweeper_moves_credits_released_on_a_linked_away_wallet(core: Core) -> None:
    """A reply had credits held on the old wallet when a payment landed there after /link:
    once the hold is voided, the sweeper's pass moves them to the linked wallet."""
    accounts = core.services.accounts
    await accounts.link("wechat", "eve", await accounts.new_link_code("telegram:eve"))
    await core.kv.set("payacct:stars:e1", "wechat:eve")  # the payment was pinned before
    await core.wallet.credit("wechat:eve", 4_000, "stray", "a credit racing the link")
    hold = await core.wallet.hold("wechat:eve", 4_000, "chat:eve", ttl=60)
    await core.credit_payment("wechat", "eve", 7_000, key="stars:e1", reason="stars")
    assert (await core.wallet.balance("telegram:eve")).total == 7_000
    await core.wallet.void(hold.id)
    await core.sweeper.tick()
    assert (await core.wallet.balance("telegram:eve")).total == 11_000
    assert (await core.wallet.balance("wechat:eve")).total == 0


async def test_admin_commands_are_refused_to_others(core: Core) -> None:
    await fund(core, ACCOUNT, 10)
    await ask(core, "hi [[tokens:5]]")
    [charge] = await captures(core, ACCOUNT)
    before = await core.wallet.balance(ACCOUNT)
    for command in ("/grant telegram:u1 1000", f"/refund {charge.id}"):
        [refusal] = await ask(core, command)
        assert refusal.kind == "error" and "operators only" in refusal.text
    assert await core.wallet.balance(ACCOUNT) == before
    [grant] = await ask(core, "/grant telegram:u1 12.5", user="admin")
    assert "Granted 12.5 credits to telegram:u1" in grant.text
    assert (await core.wallet.balance(ACCOUNT)).total == before.total + 12_500


async def test_refund_is_linked_to_the_entry_and_given_once(core: Core) -> None:
    await fund(core, ACCOUNT, 10)
    text = "a wrong answer [[fault:cut]]"
    events = await ask(core, text)
    received = count_text("gpt-3.5-turbo", of_type(events, FinalText)[-1].text)
    cost = PRICES.chat_cost("gpt-3.5-turbo", prompt_tokens("gpt-3.5-turbo", text), received)
    [charge] = await captures(core, ACCOUNT)
    [done] = await ask(core, f"/refund #{charge.id}", user="admin")
    assert f"for entry #{charge.id}" in done.text
    [again] = await ask(core, f"/refund {charge.id}", user="admin")
    assert "already compensated" in again.text
    refunds = [e for e in await credits_of(core, ACCOUNT) if e.ref == charge.id]
    assert [(e.amount, e.ref) for e in refunds] == [(cost, charge.id)]
    assert (await core.wallet.balance(ACCOUNT)).total == 10_000
    [not_charge] = await ask(core, f"/refund {refunds[0].id}", user="admin")
    assert "not a charge" in not_charge.text


async def test_refund_refuses_link_moves_and_payment_reversals(core: Core) -> None:
    """Only charges can be refunded: a refunded /link move or reversal would mint credits."""
    await fund(core, "wechat:bob", 50)
    [code_msg] = await ask(core, "/link", user="bob")
    code = code_msg.text.split("\n")[0].rsplit(" ", 1)[1]
    await ask(core, f"/link {code}", user="bob", platform="wechat")
    [moved_out] = await core.wallet.entries("wechat:bob", limit=1)
    assert moved_out.amount == -50_000
    await core.credit_payment("telegram", "bob", 7_000, key="stars:r1", reason="stars")
    reversal = await core.reverse_payment("stars:r1", reason="refunded")
    for entry in (moved_out, reversal):
        [refused] = await ask(core, f"/refund {entry.id}", user="admin")
        assert refused.kind == "error" and "not a charge" in refused.text
    # 50 credits were paid in and moved; the reversed payment is gone: nothing was minted.
    total = sum([(await core.wallet.balance(a)).total for a in ("wechat:bob", "telegram:bob")])
    assert total == 50_000


async def test_topup_redeems_a_code_once(core: Core) -> None:
    from bot.codes import create_codes

    [new] = await create_codes(core.kv, 30_000, 1)
    [ok] = await ask(core, f"/topup {new.code}")
    assert "+30 credits" in ok.text
    [used] = await ask(core, f"/topup {new.code}", user="u2")
    assert "already been used" in used.text
    [bad] = await ask(core, "/topup NOPE-NOPE")
    assert "not valid" in bad.text
    assert (await core.wallet.balance(ACCOUNT)).total == 30_000
    [info] = await ask(core, "/topup")
    assert "/topup CODE" in info.text


async def test_payments_and_trials_are_credited_once(core: Core) -> None:
    entry = await core.credit_payment("telegram", "u1", 10_000, key="stars:abc", reason="stars")
    again = await core.credit_payment("telegram", "u1", 10_000, key="stars:abc", reason="stars")
    assert entry.id == again.id
    assert await core.grant_trial("wechat", "oX", 3000) is True
    assert await core.grant_trial("wechat", "oX", 3000) is False
    reversal = await core.reverse_payment("stars:abc", reason="refunded")
    assert (reversal.amount, reversal.ref) == (-10_000, entry.id)
    assert (await core.wallet.balance(ACCOUNT)).total == 0
    assert (await core.wallet.balance("wechat:oX")).total == 3000


async def test_topup_code_typed_with_spaces_between_groups(core: Core) -> None:
    from bot.codes import create_codes

    [new] = await create_codes(core.kv, 30_000, 1)
    spaced = " ".join(new.code.replace("-", " ").split())
    assert " " in spaced
    [ok] = await ask(core, f"/topup {spaced.lower()}")
    assert "+30 credits" in ok.text


async def test_a_payment_is_reversible_without_its_pay_record(core: Core) -> None:
    """The process died between the credit and its `pay:` record: the refund still works."""
    entry = await core.credit_payment("telegram", "u1", 10_000, key="stars:lost", reason="stars")
    await core.kv.delete("pay:stars:lost")
    reversal = await core.reverse_payment("stars:lost", reason="refunded")
    assert (reversal.amount, reversal.ref) == (-10_000, entry.id)
    again = await core.reverse_payment("stars:lost", reason="refunded")  # retried: the first
    assert again.id == reversal.id
    assert (await core.wallet.balance(ACCOUNT)).total == 0


async def test_a_trial_interrupted_before_its_credit_is_granted_on_the_next_try(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    credit = core.wallet.credit

    async def crash(*args: object, **kw: object) -> object:
        raise ConnectionError("killed")

    monkeypatch.setattr(core.wallet, "credit", crash)
    with pytest.raises(ConnectionError):
        await core.grant_trial("wechat", "oT", 3000)
    monkeypatch.setattr(core.wallet, "credit", credit)
    assert await core.grant_trial("wechat", "oT", 3000) is True
    assert await core.grant_trial("wechat", "oT", 3000) is False
    assert (await core.wallet.balance("wechat:oT")).total == 3000


async def test_names_are_recorded_for_admin_find_and_deliver_reaches_the_sink(core: Core) -> None:
    from bot.events import Delivery
    from bot.store.keys import NAMES, name_key

    await ask(core, "/help", user_name="Alice Zhang")
    assert await core.kv.get(name_key("telegram:u1")) == "Alice Zhang"
    assert "telegram:u1" in await core.kv.smembers(NAMES)
    got: list[Delivery] = []

    async def sink(delivery: Delivery) -> None:
        got.append(delivery)

    core.set_sink("wechat", sink)
    note = Delivery("wechat", "oP", "oP", Notice("paid"))
    await core.deliver(note)
    assert got == [note]
