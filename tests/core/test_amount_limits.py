"""Amounts no account can hold: a /grant, /refund or /topup code past MAX_TOTAL is refused
with a clear message in the admin's or user's language, and changes nothing."""

from __future__ import annotations

import pytest

from billing import MAX_TOTAL
from billing.money import format_credits
from bot.codes import create_codes
from bot.core import Core
from bot.events import Notice
from tests.core.conftest import ask, fund

ACCOUNT = "telegram:u1"
HUGE = "1" + "0" * 30  # credits: the attack's /grant


async def test_a_huge_grant_is_refused_clearly(core: Core) -> None:
    await fund(core, ACCOUNT, 10)
    before = await core.wallet.balance(ACCOUNT)
    [refused] = await ask(core, f"/grant {ACCOUNT} {HUGE}", user="admin")
    assert isinstance(refused, Notice) and refused.kind == "error"
    assert f"{ACCOUNT} cannot take {HUGE} more credits" in refused.text
    assert f"at most {format_credits(MAX_TOTAL)} credits" in refused.text
    assert "Nothing was credited" in refused.text
    assert await core.wallet.balance(ACCOUNT) == before
    assert len(await core.wallet.entries(ACCOUNT)) == 1


async def test_a_grant_past_the_bound_is_refused_and_one_at_it_is_not(core: Core) -> None:
    await core.wallet.credit(ACCOUNT, MAX_TOTAL - 2_000, "seed", "seed")
    [refused] = await ask(core, f"/grant {ACCOUNT} 2.001", user="admin")
    assert refused.kind == "error" and "cannot take 2.001 more credits" in refused.text
    [granted] = await ask(core, f"/grant {ACCOUNT} 2", user="admin")
    assert "Granted 2 credits" in granted.text
    assert (await core.wallet.balance(ACCOUNT)).total == MAX_TOTAL


async def test_the_refusal_speaks_chinese_to_a_chinese_admin(core: Core) -> None:
    [refused] = await ask(core, f"/grant {ACCOUNT} {HUGE}", user="admin", language="zh-hans")
    assert refused.kind == "error" and "每个账户最多持有" in refused.text
    assert (await core.wallet.balance(ACCOUNT)).total == 0


async def test_a_refund_to_a_full_account_is_refused(core: Core) -> None:
    await fund(core, ACCOUNT, 10)
    await ask(core, "hi [[tokens:5]]")
    [charge] = [e for e in await core.wallet.entries(ACCOUNT) if e.amount < 0]
    room = MAX_TOTAL - (await core.wallet.balance(ACCOUNT)).total
    await core.wallet.credit(ACCOUNT, room, "fill", "seed")
    [refused] = await ask(core, f"/refund {charge.id}", user="admin")
    assert refused.kind == "error" and "at most" in refused.text
    assert (await core.wallet.balance(ACCOUNT)).total == MAX_TOTAL


async def test_a_code_the_account_cannot_hold_waits_for_room(core: Core) -> None:
    [code] = await create_codes(core.kv, 5_000, 1)
    await core.wallet.credit(ACCOUNT, MAX_TOTAL - 1_000, "seed", "seed")
    [refused] = await ask(core, f"/topup {code.code}")
    assert refused.kind == "error" and "cannot take this code" in refused.text
    assert (await core.wallet.balance(ACCOUNT)).total == MAX_TOTAL - 1_000
    # Once there is room, the same user redeems it; nobody else can have it meanwhile.
    [used] = await ask(core, f"/topup {code.code}", user="u2")
    assert "already been used" in used.text
    await core.wallet.debit(ACCOUNT, 10_000, "room", "reversal")
    [ok] = await ask(core, f"/topup {code.code}")
    assert "+5 credits" in ok.text
    assert (await core.wallet.balance(ACCOUNT)).total == MAX_TOTAL - 6_000


async def test_codes_no_account_could_hold_are_never_made(core: Core) -> None:
    with pytest.raises(ValueError, match="at most"):
        await create_codes(core.kv, MAX_TOTAL + 1, 1)
    [code] = await create_codes(core.kv, MAX_TOTAL, 1)  # the bound itself is fine
    [ok] = await ask(core, f"/topup {code.code}", user="u3")
    assert f"+{format_credits(MAX_TOTAL)} credits" in ok.text
