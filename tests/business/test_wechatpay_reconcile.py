"""WeChat Pay reconciliation: a paid order whose notification never came is still credited.

The bot asks WeChat Pay about open orders (`WeChatPay.reconcile`, run by the sweeper) and
credits a SUCCESS through the same checks and the same key as a notification, so whichever
comes first credits and the other credits nothing more. Unpaid orders are closed at WeChat Pay
and expired only when a verified answer names them CLOSED; "not found" expires an order only
after a day of saying so past its deadline. Answers that fail or do not verify change nothing.
Credits go through the real `Accounts.credit_payment` (payer pinned under `payacct:`, `pay:`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from bot.accounts import Accounts
from bot.events import Notice
from bot.payments.wechatpay import Order, WeChatPay
from bot.providers.wechatpay import NotifyRejected, PayConfig, PaymentError
from bot.settings import get_settings
from fakes import wechatpay as fake
from tests.business.conftest import Bank
from tests.business.test_admin import make_cli, use
from tests.business.test_payments import MILLI_PER_FEN, Shop, open_shop, settings_for

VERSIONS = ["v2", "v3"]


def after(order: Order, seconds: float) -> datetime:
    """`seconds` after the order was made."""
    return datetime.fromisoformat(order.created_at) + timedelta(seconds=seconds)


def deadline(order: Order) -> datetime:
    return datetime.fromisoformat(order.expires_at)


async def notification(shop: Shop, version: str, order: Order) -> httpx.Response:
    """The order's payment notification, as WeChat Pay would post it (late)."""
    if version == "v3":
        headers, body = fake.notify_v3(shop.fake.keys, order.out_trade_no, order.fen)
        return await shop.notify(body, headers)
    return await shop.notify(fake.notify_v2(order.out_trade_no, order.fen))


def told(shop: Shop) -> list[str]:
    return [d.event.text for d in shop.core.delivered if isinstance(d.event, Notice)]


async def check(pay: WeChatPay, out_trade_no: str) -> tuple[str, bool]:
    """What `creditbot admin order` does: query, and credit if paid."""
    state = await pay.query_order(out_trade_no)
    return state.state, state.state == "SUCCESS" and await pay.settle_queried(state)


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    """WeChat Pay API v2 or v3 (a test may parametrize `version` itself)."""
    return request.param


@pytest.fixture
async def shop(sqlite_bank: Bank, tmp_path: Path, version: str) -> AsyncIterator[Shop]:
    """The bot's WeChat Pay on a SQLite bank, speaking `version` to the fake WeChat Pay."""
    async with open_shop(sqlite_bank, tmp_path, v3=version == "v3") as opened:
        yield opened


@pytest.fixture
async def shop_on_every_backend(bank: Bank, tmp_path: Path, version: str) -> AsyncIterator[Shop]:
    """The same on every backend (SQLite, PostgreSQL, Redis)."""
    async with open_shop(bank, tmp_path, v3=version == "v3") as opened:
        yield opened


async def open_orders(shop: Shop) -> set[str]:
    return await shop.bank.store.smembers("wxpay:open")


# --- a lost notification --------------------------------------------------------------------


async def test_paid_order_without_notification_is_credited_once_by_reconciliation(
    shop_on_every_backend: Shop, version: str
) -> None:
    shop = shop_on_every_backend
    order = await shop.pay.create_order("wechat", "42", 990)
    shop.fake.pay(order.out_trade_no)  # paid; the notification never reaches the bot

    sweep = await shop.pay.reconcile(after(order, 90))
    assert (sweep.credited, sweep.expired, sweep.failed) == (1, 0, 0)
    assert shop.fake.asked("query") == [order.out_trade_no]
    assert await shop.balance() == 990 * MILLI_PER_FEN
    [entry] = await shop.bank.wallet.entries("wechat:42")
    assert entry.key == f"wxpay:{order.out_trade_no}"
    assert told(shop) == ["Payment received: +99000 credits.\n支付成功：+99000 积分。"]
    assert (await shop.pay.get_order(order.out_trade_no)).status == "paid"
    assert await open_orders(shop) == set()

    # The notification arrives after all: acknowledged, and nothing more is credited.
    late = await notification(shop, version, order)
    assert late.status_code in (200, 204)
    assert await shop.balance() == 990 * MILLI_PER_FEN
    assert len(await shop.bank.wallet.entries("wechat:42")) == 1
    assert len(told(shop)) == 1
    # Later passes leave the settled order alone.
    await shop.pay.reconcile(deadline(order))
    assert shop.fake.asked("query") == [order.out_trade_no]
    assert shop.fake.asked("close") == []


async def test_notification_first_then_a_query_credits_nothing_more(
    shop: Shop, version: str
) -> None:
    order = await shop.pay.create_order("wechat", "42", 500)
    shop.fake.pay(order.out_trade_no)
    assert (await notification(shop, version, order)).status_code in (200, 204)
    assert await shop.balance() == 500 * MILLI_PER_FEN

    # The operator (or a pass that read the order just before) asks WeChat Pay anyway.
    assert await check(shop.pay, order.out_trade_no) == ("SUCCESS", False)
    assert await shop.balance() == 500 * MILLI_PER_FEN
    assert len(await shop.bank.wallet.entries("wechat:42")) == 1
    assert len(told(shop)) == 1


# --- expiry -----------------------------------------------------------------------------------


async def test_unpaid_order_is_closed_at_wechat_pay_then_expired(shop: Shop) -> None:
    order = await shop.pay.create_order("wechat", "42", 100)
    otn = order.out_trade_no

    sweep = await shop.pay.reconcile(after(order, 90))  # NOTPAY before the deadline
    assert (sweep.credited, sweep.expired) == (0, 0)
    assert shop.fake.asked("close") == []
    assert (await shop.pay.get_order(otn)).status == "unpaid"

    sweep = await shop.pay.reconcile(deadline(order))
    assert sweep.expired == 1
    assert [c for c in shop.fake.calls if c[0] != "order"] == [
        ("query", otn),
        ("query", otn),
        ("close", otn),
        ("query", otn),  # the close's answer names no order: asked again, says CLOSED
    ]
    assert shop.fake.trades[otn].state == "CLOSED"  # nobody can pay it any more
    assert (await shop.pay.get_order(otn)).status == "expired"
    assert await open_orders(shop) == set()
    assert await shop.balance() == 0 and told(shop) == []


async def test_order_closed_at_wechat_pay_expires_without_a_close(shop: Shop) -> None:
    closed = await shop.pay.create_order("wechat", "42", 100)
    shop.fake.trades[closed.out_trade_no].state = "CLOSED"
    assert (await shop.pay.reconcile(deadline(closed))).expired == 1
    assert shop.fake.asked("close") == []
    assert (await shop.pay.get_order(closed.out_trade_no)).status == "expired"


def hours_past(order: Order, hours: float) -> datetime:
    return deadline(order) + timedelta(hours=hours)


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


async def test_an_order_wechat_pay_does_not_know_expires_only_after_a_day_of_not_found(
    shop_on_every_backend: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    shop = shop_on_every_backend
    order = await shop.pay.create_order("wechat", "42", 200)
    otn = order.out_trade_no
    trade = shop.fake.trades.pop(otn)  # WeChat Pay has no such order (or says so)
    for hours in (0, 1, 12, 23.9):
        sweep = await shop.pay.reconcile(hours_past(order, hours))
        assert (sweep.expired, sweep.failed) == (0, 0), hours
        assert (await shop.pay.get_order(otn)).status == "unpaid"
    assert await open_orders(shop) == {otn}
    assert shop.fake.asked("close") == []
    assert warnings(caplog, "does not know the order; kept open")

    # An answer that names the order ends the run of "not found": it starts again after.
    shop.fake.trades[otn] = trade
    trade.state = "USERPAYING"
    await shop.pay.reconcile(hours_past(order, 25))
    del shop.fake.trades[otn]
    assert (await shop.pay.reconcile(hours_past(order, 26))).expired == 0
    assert (await shop.pay.reconcile(hours_past(order, 49.9))).expired == 0
    assert shop.fake.asked("query") == [otn] * 7

    # The run is kept in the store: a restarted bot goes on counting from its start.
    restarted = WeChatPay(shop.pay.config, shop.bank.store, shop.core.credit_payment)
    assert (await restarted.reconcile(hours_past(order, 50))).expired == 1
    assert (await restarted.get_order(otn)).status == "expired"
    assert await open_orders(shop) == set()
    assert warnings(caplog, "has not known the order since")
    assert await shop.balance() == 0 and shop.fake.asked("close") == []
    await restarted.close()


async def test_a_replayed_close_confirmation_does_not_expire_a_paid_order(
    shop_on_every_backend: Shop,
) -> None:
    shop = shop_on_every_backend
    order = await shop.pay.create_order("wechat", "42", 300)
    otn = order.out_trade_no
    shop.fake.misbehave("query", "paid-after")  # NOTPAY, and the user pays just then
    shop.fake.misbehave("close", "replayed")  # another close's confirmation, replayed
    sweep = await shop.pay.reconcile(deadline(order))
    assert shop.fake.trades[otn].state == "SUCCESS"
    # The confirmation names no order: the query after it finds the payment and credits it.
    assert (sweep.credited, sweep.expired) == (1, 0)
    assert (await shop.pay.get_order(otn)).status == "paid"
    assert await shop.balance() == 300 * MILLI_PER_FEN and len(told(shop)) == 1
    assert await shop.bank.store.get(f"payacct:{order.key}") == "wechat:42"


async def test_an_order_still_payable_after_its_close_stays_open(shop: Shop) -> None:
    order = await shop.pay.create_order("wechat", "42", 300)
    otn = order.out_trade_no
    shop.fake.misbehave("close", "replayed")  # "closed", but WeChat Pay closed nothing
    sweep = await shop.pay.reconcile(deadline(order))
    assert (sweep.expired, sweep.failed) == (0, 1)
    assert shop.fake.trades[otn].state == "NOTPAY"
    assert (await shop.pay.get_order(otn)).status == "unpaid"
    assert await open_orders(shop) == {otn}
    # The next pass closes it for real; only WeChat Pay's CLOSED for this order expires it.
    assert (await shop.pay.reconcile(deadline(order))).expired == 1
    assert shop.fake.trades[otn].state == "CLOSED"
    assert shop.fake.asked("close") == [otn, otn]


@pytest.mark.parametrize("state", ["CLOSED", "NOTPAY"])
async def test_an_answer_about_another_merchants_order_expires_nothing(
    shop: Shop, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    order = await shop.pay.create_order("wechat", "42", 300)
    otn = order.out_trade_no
    shop.fake.trades[otn].state = state
    shop.fake.misbehave("query", "foreign")  # signed, our number, another mchid and appid
    sweep = await shop.pay.reconcile(deadline(order))
    assert (sweep.expired, sweep.failed) == (0, 1)
    assert shop.fake.asked("close") == []
    assert (await shop.pay.get_order(otn)).status == "unpaid"
    assert warnings(caplog, "does not match the order")
    assert (await shop.pay.reconcile(deadline(order))).expired == 1  # a genuine answer


async def test_not_found_answers_do_not_expire_a_paid_order(shop: Shop) -> None:
    order = await shop.pay.create_order("wechat", "42", 300)
    shop.fake.pay(order.out_trade_no)
    shop.fake.misbehave("query", *["notfound"] * 4)  # "no such order", replayed, for hours
    for hours in (0, 1, 6, 20):
        sweep = await shop.pay.reconcile(hours_past(order, hours))
        assert (sweep.credited, sweep.expired) == (0, 0)
    assert (await shop.pay.get_order(order.out_trade_no)).status == "unpaid"
    assert (await shop.pay.reconcile(hours_past(order, 21))).credited == 1
    assert await shop.balance() == 300 * MILLI_PER_FEN


async def test_an_order_being_paid_at_its_deadline_is_not_expired(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        order = await shop.pay.create_order("wechat", "42", 100)
        shop.fake.trades[order.out_trade_no].state = "USERPAYING"
        assert (await shop.pay.reconcile(deadline(order))).expired == 0
        assert shop.fake.asked("close") == []
        assert await open_orders(shop) == {order.out_trade_no}
        shop.fake.pay(order.out_trade_no)  # the payer confirmed
        assert (await shop.pay.reconcile(deadline(order))).credited == 1
        assert await shop.balance() == 100 * MILLI_PER_FEN


@pytest.mark.parametrize("state", ["USERPAYING", "REFUND", "SOMETHING_NEW"])
async def test_a_stuck_order_stays_open_is_asked_less_often_and_named_once_an_hour(
    sqlite_bank: Bank, tmp_path: Path, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        order = await shop.pay.create_order("wechat", "42", 100)
        otn = order.out_trade_no
        shop.fake.trades[otn].state = state
        for minute in range(0, 3 * 60, 1):  # a pass a minute for three hours past the deadline
            sweep = await shop.pay.reconcile(deadline(order) + timedelta(minutes=minute))
            assert (sweep.credited, sweep.expired) == (0, 0)
        assert await open_orders(shop) == {otn}
        assert (await shop.pay.get_order(otn)).status == "unpaid"
        assert shop.fake.asked("close") == [] and await shop.balance() == 0
        assert 10 <= len(shop.fake.asked("query")) <= 30  # not 180
        assert 3 <= len(warnings(caplog, "past its deadline and not settled")) <= 4
        shop.fake.trades[otn].state = "SUCCESS"  # e.g. the payer finished paying
        shop.fake.trades[otn].transaction_id = "4200" + "0" * 24
        assert (await shop.pay.reconcile(hours_past(order, 4))).credited == 1


async def test_orders_settled_elsewhere_are_forgotten(
    sqlite_bank: Bank, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        orders = [await shop.pay.create_order("wechat", "42", 100 + i) for i in range(3)]
        for order in orders:
            shop.fake.trades[order.out_trade_no].state = "USERPAYING"
        await shop.pay.reconcile(deadline(orders[-1]))
        assert set(shop.pay._asked) == {o.out_trade_no for o in orders}
        assert {otn for otn, _ in shop.pay._warned} == set(shop.pay._asked)
        # Another process (`creditbot admin order`, a second bot) settles two of them.
        other = WeChatPay(shop.pay.config, sqlite_bank.store, shop.core.credit_payment)
        for order in orders[:2]:
            shop.fake.pay(order.out_trade_no)
            assert await check(other, order.out_trade_no) == ("SUCCESS", True)
        await other.close()
        await shop.pay.reconcile(hours_past(orders[-1], 1))
        assert set(shop.pay._asked) == {orders[2].out_trade_no}
        assert {otn for otn, _ in shop.pay._warned} == {orders[2].out_trade_no}
        assert await shop.balance() == (100 + 101) * MILLI_PER_FEN


async def test_pending_orders_are_asked_about_from_a_minute_old_then_less_often(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        order = await shop.pay.create_order("wechat", "42", 100)
        otn = order.out_trade_no
        asked_at = []
        for second in range(0, 1800, 10):  # a pass every 10 s for the order's 30 minutes
            before = len(shop.fake.asked("query"))
            await shop.pay.reconcile(after(order, second))
            if len(shop.fake.asked("query")) > before:
                asked_at.append(second)
        assert asked_at[:4] == [60, 120, 180, 240]  # the first minutes: once a minute
        gaps = [b - a for a, b in itertools.pairwise(asked_at)]
        assert all(60 <= g <= 190 for g in gaps), gaps  # never more often, never 3+ min apart
        assert 10 <= len(asked_at) <= 20
        assert shop.fake.asked("close") == []
        await shop.pay.reconcile(deadline(order))  # and at the deadline, always
        assert shop.fake.asked("close") == [otn]


# --- bad days ---------------------------------------------------------------------------------


def short_timeout(shop: Shop) -> WeChatPay:
    """The shop's service with a client that gives up long before the fake's slow answer."""
    return WeChatPay(
        shop.pay.config,
        shop.bank.store,
        shop.core.credit_payment,
        http=httpx.AsyncClient(timeout=0.3),
        on_paid=shop.pay.on_paid,
    )


QUERY_FAULTS = [
    ("v2", "500"),
    ("v2", "429"),
    ("v2", "timeout"),
    ("v2", "badsig"),
    ("v2", "unsigned"),
    ("v2", "garbled"),
    ("v3", "500"),
    ("v3", "429"),
    ("v3", "timeout"),
    ("v3", "badsig"),
    ("v3", "unsigned"),
    ("v3", "stale"),
    ("v3", "garbled"),
]


@pytest.mark.parametrize(("version", "fault"), QUERY_FAULTS)
async def test_a_failed_query_leaves_a_paid_order_pending_and_the_next_pass_settles_it(
    shop: Shop, fault: str, caplog
) -> None:
    pay = short_timeout(shop) if fault == "timeout" else shop.pay
    paid = await pay.create_order("wechat", "42", 300)
    shop.fake.pay(paid.out_trade_no)
    shop.fake.misbehave("query", fault)
    sweep = await pay.reconcile(deadline(paid))
    assert (sweep.credited, sweep.expired, sweep.failed) == (0, 0, 1)
    assert await shop.balance() == 0 and told(shop) == []
    assert (await pay.get_order(paid.out_trade_no)).status == "unpaid"
    assert await open_orders(shop) == {paid.out_trade_no}
    warned = [r for r in caplog.records if r.getMessage() == "wechatpay order query failed"]
    assert warned and all(fake.API_KEY not in str(r.__dict__) for r in warned)

    sweep = await pay.reconcile(deadline(paid))
    assert sweep.credited == 1
    assert await shop.balance() == 300 * MILLI_PER_FEN and len(told(shop)) == 1
    await pay.close()


@pytest.mark.parametrize(("version", "fault"), QUERY_FAULTS)
async def test_a_failed_query_at_the_deadline_does_not_expire_an_unpaid_order(
    shop: Shop, fault: str
) -> None:
    pay = short_timeout(shop) if fault == "timeout" else shop.pay
    order = await pay.create_order("wechat", "42", 300)
    shop.fake.misbehave("query", fault)
    assert (await pay.reconcile(deadline(order))).expired == 0
    assert shop.fake.asked("close") == []
    assert (await pay.get_order(order.out_trade_no)).status == "unpaid"
    assert (await pay.reconcile(deadline(order))).expired == 1  # the next pass closes it
    assert shop.fake.trades[order.out_trade_no].state == "CLOSED"
    await pay.close()


@pytest.mark.parametrize("fault", ["500", "badsig"])
async def test_a_failed_close_does_not_expire_the_order(shop: Shop, fault: str) -> None:
    order = await shop.pay.create_order("wechat", "42", 300)
    shop.fake.misbehave("close", fault)
    assert (await shop.pay.reconcile(deadline(order))).expired == 0
    assert (await shop.pay.get_order(order.out_trade_no)).status == "unpaid"
    # Paid between the query and the close: the next pass credits instead of expiring.
    shop.fake.pay(order.out_trade_no)
    sweep = await shop.pay.reconcile(deadline(order))
    assert (sweep.credited, sweep.expired) == (1, 0)
    assert (await shop.pay.get_order(order.out_trade_no)).status == "paid"


async def test_paid_between_the_query_and_the_close_is_credited_not_expired(shop: Shop) -> None:
    order = await shop.pay.create_order("wechat", "42", 300)
    shop.fake.misbehave("query", "paid-after")  # NOTPAY, and the user pays just then
    sweep = await shop.pay.reconcile(deadline(order))
    assert (sweep.expired, sweep.failed) == (0, 1)  # WeChat Pay refused the close: paid
    assert shop.fake.asked("close") == [order.out_trade_no]
    assert (await shop.pay.get_order(order.out_trade_no)).status == "unpaid"
    assert (await shop.pay.reconcile(deadline(order))).credited == 1
    assert (await shop.pay.get_order(order.out_trade_no)).status == "paid"
    assert await shop.balance() == 300 * MILLI_PER_FEN


@pytest.mark.parametrize("fault", ["amount", "mchid", "appid"])
async def test_a_success_answer_that_does_not_match_the_order_credits_nothing(
    shop: Shop, fault: str
) -> None:
    order = await shop.pay.create_order("wechat", "42", 300)
    shop.fake.misbehave("query", fault, fault)
    sweep = await shop.pay.reconcile(deadline(order))
    assert (sweep.credited, sweep.expired, sweep.failed) == (0, 0, 1)
    with pytest.raises(NotifyRejected, match="mismatch"):
        await check(shop.pay, order.out_trade_no)
    assert await shop.balance() == 0 and told(shop) == []
    assert (await shop.pay.get_order(order.out_trade_no)).status == "unpaid"
    assert shop.fake.asked("close") == []


@pytest.mark.parametrize("fault", ["badsig", "unsigned", "stale", "500"])
async def test_v3_order_whose_answer_does_not_verify_is_refused(
    sqlite_bank: Bank, tmp_path: Path, fault: str
) -> None:
    async with open_shop(sqlite_bank, tmp_path, v3=True) as shop:
        shop.fake.misbehave("order", fault)
        with pytest.raises(PaymentError):
            await shop.pay.create_order("wechat", "42", 100)
        assert await open_orders(shop) == set()
        [otn] = shop.fake.asked("order")
        assert await shop.pay.get_order(otn) is None


# --- concurrency ------------------------------------------------------------------------------


async def test_reconciliation_and_notification_at_the_same_moment_credit_once(
    shop_on_every_backend: Shop, version: str
) -> None:
    shop = shop_on_every_backend
    orders = [await shop.pay.create_order("wechat", "42", 100 + i) for i in range(3)]
    for order in orders:
        shop.fake.pay(order.out_trade_no)
    for order in orders:
        when = deadline(order)
        await asyncio.gather(
            shop.pay.reconcile(when),
            notification(shop, version, order),
            check(shop.pay, order.out_trade_no),
            notification(shop, version, order),
            shop.pay.reconcile(when),
        )
    assert await shop.balance() == sum(o.fen for o in orders) * MILLI_PER_FEN
    entries = await shop.bank.wallet.entries("wechat:42")
    assert sorted(e.key for e in entries) == sorted(o.key for o in orders)
    assert len(told(shop)) == 3
    by_key = {e.key: e.id for e in entries}
    for order in orders:
        assert (await shop.pay.get_order(order.out_trade_no)).status == "paid"
        # Credited through Accounts.credit_payment: the payer pinned, the entry recorded.
        assert await shop.bank.store.get(f"payacct:{order.key}") == "wechat:42"
        assert await shop.bank.store.get(f"pay:{order.key}") == by_key[order.key]


async def test_a_linked_payer_is_credited_once_when_reconciliation_races_the_notification(
    shop_on_every_backend: Shop, version: str
) -> None:
    shop = shop_on_every_backend
    accounts = shop.core.accounts
    await accounts.link("wechat", "42", await accounts.new_link_code("telegram:7"))
    order = await shop.pay.create_order("wechat", "42", 700)
    shop.fake.pay(order.out_trade_no)
    when = deadline(order)
    await asyncio.gather(
        notification(shop, version, order),
        shop.pay.reconcile(when),
        check(shop.pay, order.out_trade_no),
        shop.pay.reconcile(when),
        notification(shop, version, order),
    )
    # The linked wallet is paid, once; the WeChat identity's own account gets nothing.
    assert (await shop.bank.wallet.balance("telegram:7")).total == 700 * MILLI_PER_FEN
    assert await shop.balance() == 0
    [entry] = await shop.bank.wallet.entries("telegram:7")
    assert entry.key == order.key
    assert await shop.bank.store.get(f"payacct:{order.key}") == "telegram:7"
    assert await shop.bank.store.get(f"pay:{order.key}") == entry.id
    assert len(told(shop)) == 1


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("point", ["query", "close", "query after close", "credit"])
@pytest.mark.slow
async def test_a_reconciliation_cancelled_midway_leaves_the_order_to_the_next_pass(
    bank: Bank, tmp_path: Path, version: str, point: str
) -> None:
    """The sweeper stopped (shutdown) in the middle of an order: nothing half-done remains."""
    async with open_shop(bank, tmp_path, v3=version == "v3") as shop:
        shop.fake.delay = 0.5  # a slow answer: long enough to be cancelled while waiting
        order = await shop.pay.create_order("wechat", "42", 400)
        otn = order.out_trade_no
        reached = asyncio.Event()
        real_credit = bank.wallet.credit
        if point == "credit":
            shop.fake.pay(otn)

            async def stuck_credit(*args, **kwargs):
                reached.set()
                await asyncio.Event().wait()  # the wallet never answers: cancelled here

            bank.wallet.credit = stuck_credit  # type: ignore[method-assign]
        else:
            faults = {"query": ["timeout"], "query after close": ["ok", "timeout"]}
            shop.fake.misbehave("query", *faults.get(point, []))
            shop.fake.misbehave("close", *(["timeout"] if point == "close" else []))
        calls = {"query": 1, "close": 2, "query after close": 3}
        task = asyncio.create_task(shop.pay.reconcile(deadline(order)))
        for _ in range(500):  # until the pass is waiting at the point (5 s at most)
            if reached.is_set() or len(shop.fake.calls) > calls.get(point, 99):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if point == "credit":
            del bank.wallet.credit
            assert bank.wallet.credit == real_credit
        assert (await shop.pay.get_order(otn)).status == "unpaid"
        assert await open_orders(shop) == {otn}
        assert await shop.balance() == 0 and told(shop) == []

        sweep = await shop.pay.reconcile(deadline(order))
        if point == "credit":
            assert (sweep.credited, await shop.balance()) == (1, 400 * MILLI_PER_FEN)
            assert (await shop.pay.get_order(otn)).status == "paid"
            assert len(await bank.wallet.entries("wechat:42")) == 1
        else:
            assert sweep.expired == 1 and shop.fake.trades[otn].state == "CLOSED"
            assert (await shop.pay.get_order(otn)).status == "expired"
        assert await open_orders(shop) == set()


# --- the operator's hand: creditbot admin order -------------------------------------------------


@contextmanager
def fake_in_thread() -> Iterator[tuple[fake.FakeWeChatPay, str]]:
    """The stand-in WeChat Pay on a loop of its own, for a command that runs asyncio.run."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    wxpay = fake.FakeWeChatPay(fake.Keys())
    runner = web.AppRunner(wxpay.app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield wxpay, f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_admin_order_shows_wechat_pays_answer_and_credits_a_paid_order_once(
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    version: str,
) -> None:
    with fake_in_thread() as (wxpay, api_base):
        settings = settings_for(api_base, tmp_path, wxpay.keys, v3=version == "v3", sign_type="MD5")
        env = {
            "WECHAT_APPID": fake.APPID,
            "WECHATPAY_MCHID": fake.MCHID,
            "WECHATPAY_API_KEY": fake.API_KEY,
            "WECHATPAY_SIGN_TYPE": "MD5",
            "WECHATPAY_API_BASE": api_base,
        }
        if version == "v3":
            env |= {
                "WECHATPAY_API_V3_KEY": fake.API_V3_KEY,
                "WECHATPAY_PLATFORM_CERT": str(settings.wechatpay_platform_cert),
                "WECHATPAY_PRIVATE_KEY": str(settings.wechatpay_private_key),
                "WECHATPAY_CERT_SERIAL": wxpay.keys.serial,
            }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        cli = make_cli(sqlite_url, monkeypatch, capsys)

        async def create(wallet, store, fen: int) -> str:
            credit = Accounts(store, wallet).credit_payment
            pay = WeChatPay(PayConfig.from_settings(settings), store, credit)
            try:
                return (await pay.create_order("wechat", "42", fen)).out_trade_no
            finally:
                await pay.close()

        async def balance(wallet, store) -> int:
            return (await wallet.balance("wechat:42")).total

        paid = use(sqlite_url, create, 990)
        unpaid = use(sqlite_url, create, 100)
        wxpay.pay(paid)  # the notification never reached the bot

        # WeChat Pay cannot be asked, or its answer does not verify or match: nothing changes.
        for fault in ("500", "badsig", "garbled", "amount", "mchid"):
            wxpay.misbehave("query", fault)
            code, out, err = cli("order", paid)
            assert code == 1 and "nothing" in err and "credited +" not in out, fault
            assert "local      unpaid" in out
        assert use(sqlite_url, balance) == 0

        code, out, err = cli("order", paid)
        assert code == 0, err
        assert f"order      {paid} (NATIVE)" in out and "¥9.90 = 99000 credits" in out
        assert "local      unpaid" in out and "wechatpay  SUCCESS (transaction 4200" in out
        assert f"credited +99000 credits (key wxpay:{paid})" in out
        assert use(sqlite_url, balance) == 990 * MILLI_PER_FEN

        code, out, _ = cli("order", paid)  # again: shown as paid, nothing more credited
        assert code == 0 and "local      paid" in out and "already credited" in out
        assert use(sqlite_url, balance) == 990 * MILLI_PER_FEN

        code, out, _ = cli("order", unpaid)
        assert code == 0 and "wechatpay  NOTPAY" in out and "nothing to credit" in out
        code, _, err = cli("order", "cb20260101000000deadbeef0000")
        assert code == 1 and "no WeChat Pay order" in err
        assert use(sqlite_url, balance) == 990 * MILLI_PER_FEN
        assert wxpay.asked("close") == []  # looking is all it does to an unpaid order
    get_settings.cache_clear()
