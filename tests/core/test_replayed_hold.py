"""A message delivered again after its hold was taken for another amount is not answered twice.

Between two deliveries of one message the balance (chat) or the price (images) can change, so
the replay asks for a hold of another amount under the same key; the wallet refuses that with
IdempotencyConflict, and the flow treats the message as already handled. Likewise a retried
payment reversal or trial grant whose amount changed returns to the first one.
"""

from __future__ import annotations

from bot.core import Core
from simulator import Simulator
from tests.core.conftest import fund, message

ACCOUNT = "telegram:u1"


async def test_chat_replay_with_another_hold_amount_is_already_handled(
    core: Core, sim: Simulator
) -> None:
    await fund(core, ACCOUNT, 100)
    msg = message("hello again [[tokens:12]]")
    # The first delivery held 7 credits, then its process died before answering.
    first = await core.wallet.hold(ACCOUNT, 7_000, f"chat:telegram:{msg.message_id}", ttl=60)
    seen = sim.stats["total"]
    events = [e async for e in core.handle(msg)]
    assert events == []  # no crash, no second answer
    assert sim.stats["total"] == seen  # nothing asked upstream
    assert await core.wallet.open_holds() == [first]
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (100_000, 7_000)


async def test_a_retried_reversal_after_the_balance_changed_returns_the_first(core: Core) -> None:
    """Partly spent payment reversed, then topped up: the retry asks for another amount."""
    entry = await core.credit_payment("telegram", "u1", 10_000, key="stars:part", reason="stars")
    hold = await core.wallet.hold(ACCOUNT, 6_000, "chat:spent", ttl=60)
    await core.wallet.capture(hold.id, 6_000)
    first = await core.reverse_payment("stars:part", reason="refunded")
    assert (first.amount, first.ref) == (-4_000, entry.id)
    await fund(core, ACCOUNT, 5)
    again = await core.reverse_payment("stars:part", reason="refunded")
    assert again == first
    assert (await core.wallet.balance(ACCOUNT)).total == 5_000


async def test_a_trial_whose_amount_changed_after_a_crash_is_not_granted_twice(
    core: Core,
) -> None:
    await core.wallet.credit("wechat:oT", 3_000, "trial:wechat:oT", "trial credits")  # then died
    assert await core.grant_trial("wechat", "oT", 5_000) is True  # the flag is finally set
    assert await core.grant_trial("wechat", "oT", 5_000) is False
    assert (await core.wallet.balance("wechat:oT")).total == 3_000
