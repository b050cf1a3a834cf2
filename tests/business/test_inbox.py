"""The payment inbox, provider-neutral: a payment is recorded before money moves, credited
once however often it is retried, confirmed once, and a failing pass loses nothing."""

from __future__ import annotations

from typing import Any

import pytest

from bot.accounts import Accounts
from bot.payments.inbox import (
    PAY_ACCOUNT,
    PAY_ENTRY,
    REVERSAL,
    REVERSE_ACCOUNT,
    STARS,
    STARS_RECEIPT,
    WECHAT_PAY,
    WECHAT_PAY_NOT_FOUND,
    PaymentInbox,
    Provider,
)
from tests.business.conftest import Bank

PAID = 5_000_000  # 5,000 credits


def inbox_on(bank: Bank, *, accounts: bool = True) -> PaymentInbox:
    acc = Accounts(bank.store, bank.wallet)
    return PaymentInbox(bank.store, acc.credit_payment, accounts=acc if accounts else None)


async def balance(bank: Bank, user: str) -> int:
    return (await bank.wallet.balance(f"telegram:{user}")).total


async def test_a_payment_is_recorded_credited_once_and_confirmed(bank: Bank) -> None:
    inbox = inbox_on(bank)
    await inbox.record(STARS, "c1", {"user_id": "1", "credits_milli": PAID})
    assert await inbox.open(STARS) == {"c1"}
    assert await inbox.record_of(STARS, "c1") == {"user_id": "1", "credits_milli": PAID}
    for _ in range(2):  # a retry after a crash between the credit and its confirmation
        entry = await inbox.credit(STARS, "c1", "telegram", "1", PAID, reason="Telegram Stars")
        assert entry.key == "tgstars:c1"
    assert await balance(bank, "1") == PAID
    assert await inbox.confirm(STARS, "c1") is True
    assert await inbox.open(STARS) == set()
    assert await inbox.record_of(STARS, "c1") is None  # Stars keep no record once credited


async def test_a_kept_record_gets_a_paid_marker_whose_first_writer_is_the_confirmation(
    bank: Bank,
) -> None:
    inbox = inbox_on(bank)
    await inbox.record(WECHAT_PAY, "cb1", {"fen": 100})
    await inbox.credit(WECHAT_PAY, "cb1", "telegram", "2", 100_000 * 100, reason="WeChat Pay")
    assert await inbox.paid_marker(WECHAT_PAY, "cb1") is None
    assert await inbox.confirm(WECHAT_PAY, "cb1", {"transaction_id": "t1"}) is True
    assert await inbox.confirm(WECHAT_PAY, "cb1", {"transaction_id": "t2"}) is False
    assert await inbox.paid_marker(WECHAT_PAY, "cb1") == {"transaction_id": "t1"}
    assert await inbox.record_of(WECHAT_PAY, "cb1") == {"fen": 100}  # the operator's view
    assert await inbox.open(WECHAT_PAY) == set()
    with pytest.raises(ValueError):
        STARS.paid_key("c1")


async def test_a_retry_pass_settles_what_it_can_and_leaves_the_rest_open(
    sqlite_bank: Bank, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = inbox_on(sqlite_bank)
    for charge in ("a", "b", "c"):
        await inbox.record(STARS, charge, {"user_id": "3", "credits_milli": PAID})
    await sqlite_bank.store.sadd(STARS.open_set, "gone")  # its record was never written
    seen: list[str] = []

    async def settle(charge: str, record: dict[str, Any]) -> bool:
        seen.append(charge)
        if charge == "b":
            raise ConnectionError("the database went away")
        await inbox.credit(
            STARS,
            charge,
            "telegram",
            record["user_id"],
            record["credits_milli"],
            reason="Telegram Stars",
        )
        await inbox.confirm(STARS, charge)
        return True

    done = await inbox.retry(STARS, settle)
    assert (done.open, done.settled, done.failed) == ({"a", "b", "c", "gone"}, 2, 1)
    assert seen == ["a", "b", "c"]  # in id order; nothing to settle "gone" from
    assert await inbox.open(STARS) == {"b"}
    assert "settling payment tgstars:b failed" in caplog.text
    assert await balance(sqlite_bank, "3") == 2 * PAID

    done = await inbox.retry(STARS, settle, among=set())  # a pass over nothing does nothing
    assert (done.settled, done.failed) == (0, 0)


async def test_reversal_needs_the_accounts_and_a_known_payment(sqlite_bank: Bank) -> None:
    other = Provider("other", "other:open", "other:rec:")
    assert other.key("x") == "other:x" and other.record_key("x") == "other:rec:x"
    with pytest.raises(RuntimeError):
        await inbox_on(sqlite_bank, accounts=False).reverse("tgstars:c1", reason="refund")
    inbox = inbox_on(sqlite_bank)
    with pytest.raises(LookupError):
        await inbox.reverse("tgstars:never", reason="refund")
    await inbox.credit(STARS, "c9", "telegram", "9", PAID, reason="Telegram Stars")
    reversal = await inbox.reverse("tgstars:c9", reason="refund")
    assert (reversal.key, reversal.amount) == ("reverse:tgstars:c9", -PAID)
    assert await inbox.reverse("tgstars:c9", reason="refund") == reversal
    assert await balance(sqlite_bank, "9") == 0


def test_the_store_keys_are_the_ones_already_in_operators_stores() -> None:
    """Renaming one would strand every payment recorded under the old name."""
    assert (STARS.key("c"), STARS.open_set, STARS.record_key("c")) == (
        "tgstars:c",
        "tgstars:pending",
        "tgstars:pending:c",
    )
    assert (WECHAT_PAY.key("o"), WECHAT_PAY.open_set, WECHAT_PAY.record_key("o")) == (
        "wxpay:o",
        "wxpay:open",
        "wxpay:order:o",
    )
    assert WECHAT_PAY.paid_key("o") == "wxpay:paid:o"
    assert (STARS_RECEIPT, WECHAT_PAY_NOT_FOUND) == ("tgstars:receipt:", "wxpay:notfound:")
    assert (PAY_ENTRY, PAY_ACCOUNT, REVERSE_ACCOUNT, REVERSAL) == (
        "pay:",
        "payacct:",
        "reverseacct:",
        "reverse:",
    )
