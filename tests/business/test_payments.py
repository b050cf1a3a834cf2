"""WeChat Pay top-ups: orders at a stand-in WeChat Pay, notifications over real HTTP.

A notification credits only when it is genuine and matches its order, and only once however
often it is replayed. Amounts: 1 fen = 100 credits = 100,000 millicredits.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import png
import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.wechat import wechatpay as adapter
from adapters.wechat.pay_page import qr_png
from billing.money import parse_fen
from bot.accounts import Accounts
from bot.events import Delivery, Notice
from bot.payments.wechatpay import WeChatPay
from bot.providers.wechatpay import sign_v2, verify_v3
from bot.scheduler import Scheduler
from bot.settings import Settings
from fakes import wechatpay as fake
from tests.business.conftest import Bank

MILLI_PER_FEN = 100_000


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """Run an aiohttp app on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class CoreStandIn:
    """What the endpoint needs of the Core: its store, `credit_payment`, a sink, a scheduler.

    `credit_payment` is the real one the Core delegates to (`Accounts.credit_payment` on the
    test's store and wallet, as `creditbot admin order` builds it): the payer's account pinned
    under `payacct:`, the credit, its `pay:` record.
    """

    def __init__(self, bank: Bank) -> None:
        self.kv = bank.store
        self.wallet = bank.wallet
        self.accounts = Accounts(bank.store, bank.wallet)
        self.credit_payment = self.accounts.credit_payment
        self.delivered: list[Delivery] = []
        self.scheduler = Scheduler()  # never started: the tests run `reconcile` themselves

    async def deliver(self, delivery: Delivery) -> None:
        self.delivered.append(delivery)


@dataclass
class Shop:
    """The bot's HTTP app with the notify endpoint, the fake WeChat Pay, and an HTTP client."""

    bank: Bank
    pay: WeChatPay
    fake: fake.FakeWeChatPay
    notify_url: str
    http: httpx.AsyncClient
    core: CoreStandIn

    async def notify(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        headers = headers or {"Content-Type": "text/xml"}
        return await self.http.post(self.notify_url, content=body, headers=headers)

    async def balance(self, user: str = "42") -> int:
        return (await self.bank.wallet.balance(f"wechat:{user}")).total


def settings_for(
    api_base: str, tmp: Path, keys: fake.Keys, *, v3: bool, sign_type: str
) -> Settings:
    extra: dict[str, Any] = {}
    if v3:
        (tmp / "platform.pem").write_bytes(keys.platform_cert)
        (tmp / "merchant.pem").write_bytes(fake.pem_private(keys.merchant))
        extra = {
            "wechatpay_api_v3_key": fake.API_V3_KEY,
            "wechatpay_platform_cert": tmp / "platform.pem",
            "wechatpay_private_key": tmp / "merchant.pem",
            "wechatpay_cert_serial": keys.serial,
        }
    return Settings(
        _env_file=None,
        wechat_appid=fake.APPID,
        wechatpay_mchid=fake.MCHID,
        wechatpay_api_key=fake.API_KEY,
        wechatpay_sign_type=sign_type,
        wechatpay_notify_url="https://bot.example.com/wechatpay/notify",
        wechatpay_api_base=api_base,
        **extra,
    )


@asynccontextmanager
async def open_shop(
    bank: Bank, tmp: Path, *, v3: bool = False, sign_type: str = "HMAC-SHA256"
) -> AsyncIterator[Shop]:
    keys = fake.Keys()
    wxpay = fake.FakeWeChatPay(keys)
    async with served(wxpay.app) as api_base:
        settings = settings_for(api_base, tmp, keys, v3=v3, sign_type=sign_type)
        app = web.Application()
        core = CoreStandIn(bank)
        front = adapter.install(core, settings, app)
        assert front is not None
        pay = app[adapter.APP_KEY]
        async with served(app) as base, httpx.AsyncClient() as http:
            await front.start()
            try:
                yield Shop(bank, pay, wxpay, base + settings.wechatpay_notify_path, http, core)
            finally:
                await front.stop()


@pytest.fixture(scope="module")
def keys() -> fake.Keys:
    return fake.Keys()


# --- v2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign_type", ["HMAC-SHA256", "MD5"])
async def test_native_order_paid_by_v2_notification_credits_once(
    sqlite_bank: Bank, tmp_path: Path, sign_type: str
) -> None:
    async with open_shop(sqlite_bank, tmp_path, sign_type=sign_type) as shop:
        order = await shop.pay.create_order("wechat", "42", 990)  # 9.90 CNY
        assert order.code_url and order.code_url.startswith("weixin://")
        [sent] = shop.fake.orders
        assert (sent["total_fee"], sent["trade_type"]) == ("990", "NATIVE")
        assert sent["sign_type"] == sign_type

        # The QR code the user scans is a real PNG image.
        width, height, _, _ = png.Reader(bytes=qr_png(order.code_url)).read()
        assert width == height and width > 50

        note = fake.notify_v2(order.out_trade_no, 990, sign_type=sign_type)
        first = await shop.notify(note)
        assert first.status_code == 200 and b"SUCCESS" in first.content
        assert await shop.balance() == 990 * MILLI_PER_FEN  # 99,000 credits
        again = await shop.notify(note)  # WeChat Pay repeats until it hears SUCCESS
        assert again.status_code == 200 and b"SUCCESS" in again.content
        assert await shop.balance() == 990 * MILLI_PER_FEN
        [entry] = await sqlite_bank.wallet.entries("wechat:42")
        assert entry.key == f"wxpay:{order.out_trade_no}"
        # The payer hears about it once, in both languages.
        [told] = shop.core.delivered
        assert (told.platform, told.user_id) == ("wechat", "42")
        assert isinstance(told.event, Notice) and "+99000 credits" in told.event.text
        assert "支付成功" in told.event.text
        assert (await shop.pay.get_order(order.out_trade_no)).status == "paid"


async def test_replays_racing_each_other_credit_once(bank: Bank, tmp_path: Path) -> None:
    async with open_shop(bank, tmp_path) as shop:
        order = await shop.pay.create_order("wechat", "42", 100)
        note = fake.notify_v2(order.out_trade_no, 100)
        answers = await asyncio.gather(*(shop.notify(note) for _ in range(6)))
        assert all(a.status_code == 200 and b"SUCCESS" in a.content for a in answers)
        assert await shop.balance() == 100 * MILLI_PER_FEN
        assert len(await bank.wallet.entries("wechat:42")) == 1


async def test_forged_and_mismatched_v2_notifications_credit_nothing(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        order = await shop.pay.create_order("wechat", "42", 500)
        otn = order.out_trade_no
        forged = [
            fake.notify_v2(otn, 500, key="x" * 32),  # not signed with our key
            fake.notify_v2(otn, 50_000),  # more credits than paid for
            fake.notify_v2(otn, 1),  # paid one fen for a 5 CNY order
            fake.notify_v2("cb20260101000000deadbeef0000", 500),  # no such order
            fake.notify_v2(otn, 500, mch_id="1900000999"),  # another merchant
            fake.notify_v2(otn, 500, appid="wx0000000000000000"),  # another app
            fake.notify_v2(otn, 500, fee_type="USD"),
            b"<xml><out_trade_no>" + otn.encode() + b"</out_trade_no></xml>",  # unsigned
            b"not xml at all",
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml>&a;</xml>',
        ]
        # A genuine signature over a tampered amount: the signature no longer verifies.
        tampered = fake.notify_v2(otn, 500).replace(b">500<", b">50000<")
        for body in [*forged, tampered]:
            answer = await shop.notify(body)
            assert answer.status_code >= 400 and b"FAIL" in answer.content, body
        assert await shop.balance() == 0
        assert (await shop.pay.get_order(otn)).status == "unpaid"


async def test_v2_notification_cannot_pick_a_weaker_sign_type(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path, sign_type="HMAC-SHA256") as shop:
        order = await shop.pay.create_order("wechat", "42", 100)
        otn = order.out_trade_no
        downgrades = [
            # Signed with the API key, but with MD5 and saying so (a captured MD5 signature).
            fake.notify_v2(otn, 100, sign_type="MD5"),
            fake.notify_v2(otn, 100, sign_type="MD5", named_type=None),
            fake.notify_v2(otn, 100, named_type="MD5"),
        ]
        for body in downgrades:
            answer = await shop.notify(body)
            assert answer.status_code == 400 and b"FAIL" in answer.content, body
        assert await shop.balance() == 0
        assert (await shop.pay.get_order(otn)).status == "unpaid"
        # The configured type credits, whether the notification names it or not (once).
        for body in (fake.notify_v2(otn, 100, named_type=None), fake.notify_v2(otn, 100)):
            answer = await shop.notify(body)
            assert answer.status_code == 200 and b"SUCCESS" in answer.content
        assert await shop.balance() == 100 * MILLI_PER_FEN


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_v2_garbage_signature_is_a_plain_fail(
    sqlite_bank: Bank, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        order = await shop.pay.create_order("wechat", "42", 100)
        genuine = fake.notify_v2(order.out_trade_no, 100)
        for sign in ("\u00e9", "签名", "\u00b2" * 64):
            body = genuine.replace(b"<sign>", b"<sign>" + sign.encode())
            answer = await shop.notify(body)
            assert answer.status_code == 400 and b"FAIL" in answer.content, sign
        assert errors(caplog) == []  # refused, not a 500 with a traceback
        assert await shop.balance() == 0


async def test_v3_garbage_timestamp_or_signature_is_a_plain_fail(
    sqlite_bank: Bank, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_shop(sqlite_bank, tmp_path, v3=True) as shop:
        order = await shop.pay.create_order("wechat", "42", 100)
        headers, body = fake.notify_v3(shop.fake.keys, order.out_trade_no, 100)
        ts = headers["Wechatpay-Timestamp"]
        arabic = ts.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
        garbage: list[tuple[str, bytes]] = [
            ("Wechatpay-Timestamp", "\u00b2".encode()),  # isdigit() says yes, int() says no
            ("Wechatpay-Timestamp", arabic.encode()),  # int() reads it: still not ASCII
            ("Wechatpay-Timestamp", b"1" * 5000),  # int() refuses more than 4300 digits
            ("Wechatpay-Timestamp", b"-" + ts.encode()),
            ("Wechatpay-Signature", "\u00e9".encode() + headers["Wechatpay-Signature"].encode()),
            ("Wechatpay-Signature", b"\xff\xfe"),  # not even UTF-8
            ("Wechatpay-Nonce", b"\xff"),
        ]
        for name, value in garbage:
            raw = {k: v.encode() for k, v in headers.items()} | {name: value}
            answer = await shop.http.post(shop.notify_url, content=body, headers=raw)
            assert answer.status_code == 400, (name, value[:20], answer.status_code)
            assert answer.json()["code"] == "FAIL"
        assert errors(caplog) == []
        assert await shop.balance() == 0
        assert (await shop.notify(body, headers)).status_code == 204  # the genuine one
        assert await shop.balance() == 100 * MILLI_PER_FEN


def test_sign_type_setting_is_checked_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("SHA1", "md5", "HMAC_SHA256"):
        with pytest.raises(ValidationError, match="wechatpay_sign_type"):
            Settings(_env_file=None, wechatpay_sign_type=bad)
    monkeypatch.setenv("WECHATPAY_SIGN_TYPE", "hmac-sha256")
    with pytest.raises(ValidationError, match="'HMAC-SHA256' or 'MD5'"):
        Settings(_env_file=None)
    monkeypatch.setenv("WECHATPAY_SIGN_TYPE", "MD5")
    assert Settings(_env_file=None).wechatpay_sign_type == "MD5"
    monkeypatch.setenv("WECHATPAY_SIGN_TYPE", "")  # left empty: the default
    assert Settings(_env_file=None).wechatpay_sign_type == "HMAC-SHA256"


async def test_jsapi_order_gives_weixinjsbridge_parameters(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        with pytest.raises(ValueError):
            await shop.pay.create_order("wechat", "42", 100, trade_type="JSAPI")
        order = await shop.pay.create_order("wechat", "42", 100, trade_type="JSAPI", openid="o1")
        params = shop.pay.jsapi_params(order)
        assert params["package"] == f"prepay_id={order.prepay_id}"
        assert params["appId"] == fake.APPID
        unsigned = {k: v for k, v in params.items() if k != "paySign"}
        assert params["paySign"] == sign_v2(unsigned, fake.API_KEY, params["signType"])
        assert shop.fake.orders[-1]["openid"] == "o1"


async def test_unpaid_orders_expire(sqlite_bank: Bank, tmp_path: Path) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        old = await shop.pay.create_order("wechat", "42", 100)
        paid = await shop.pay.create_order("wechat", "42", 200)
        await shop.notify(fake.notify_v2(paid.out_trade_no, 200))
        later = datetime.now(UTC) + timedelta(seconds=shop.pay.config.order_ttl + 1)
        assert await shop.pay.expire_orders(now=later) == 1
        assert (await shop.pay.get_order(old.out_trade_no)).status == "expired"
        assert (await shop.pay.get_order(paid.out_trade_no)).status == "paid"
        # The order told WeChat Pay its deadline, so WeChat Pay refuses late payments itself.
        assert all(len(o["time_expire"]) == 14 for o in shop.fake.orders)
        # A payment WeChat Pay accepted before the deadline still counts when it arrives late.
        answer = await shop.notify(fake.notify_v2(old.out_trade_no, 100))
        assert answer.status_code == 200
        assert await shop.balance() == 300 * MILLI_PER_FEN


# --- v3 ------------------------------------------------------------------------------------


async def test_v3_order_and_notification_with_the_platform_certificate(
    bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(bank, tmp_path, v3=True) as shop:
        keys = shop.fake.keys
        order = await shop.pay.create_order("wechat", "42", 1000)
        assert order.code_url  # the stand-in verified our RSA signature to answer this
        sent = shop.fake.orders[-1]
        assert sent["amount"] == {"total": 1000, "currency": "CNY"}
        assert sent["mchid"] == fake.MCHID and sent["appid"] == fake.APPID

        headers, body = fake.notify_v3(keys, order.out_trade_no, 1000)
        answer = await shop.notify(body, headers)
        assert answer.status_code in (200, 204)
        assert await shop.balance() == 1000 * MILLI_PER_FEN
        replay = await shop.notify(body, headers)
        assert replay.status_code in (200, 204)
        assert await shop.balance() == 1000 * MILLI_PER_FEN
        assert len(await bank.wallet.entries("wechat:42")) == 1


async def test_forged_and_mismatched_v3_notifications_credit_nothing(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path, v3=True) as shop:
        keys = shop.fake.keys
        order = await shop.pay.create_order("wechat", "42", 1000)
        otn = order.out_trade_no
        stranger = fake.rsa_key()
        cases = [
            fake.notify_v3(keys, otn, 1000, signer=stranger),  # not the platform's key
            fake.notify_v3(keys, otn, 999),
            fake.notify_v3(keys, "cb20260101000000deadbeef0000", 1000),
            fake.notify_v3(keys, otn, 1000, mchid="1900000999"),
            fake.notify_v3(keys, otn, 1000, appid="wx0000000000000000"),
            fake.notify_v3(keys, otn, 1000, currency="USD"),
            fake.notify_v3(keys, otn, 1000, api_v3_key="w" * 32),  # does not decrypt
            fake.notify_v3(keys, otn, 1000, timestamp=1_600_000_000),  # an old capture
        ]
        headers, body = fake.notify_v3(keys, otn, 1000)
        cases.append((headers, body.replace(b'"TRANSACTION.SUCCESS"', b'"TRANSACTION.SUCCESS" ')))
        for h, b in cases:
            answer = await shop.notify(b, h)
            assert answer.status_code >= 400, answer.text
            assert answer.json()["code"] == "FAIL"
        assert await shop.balance() == 0


async def test_v3_jsapi_parameters_are_signed_with_the_merchant_key(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path, v3=True) as shop:
        order = await shop.pay.create_order("wechat", "42", 100, trade_type="JSAPI", openid="o1")
        params = shop.pay.jsapi_params(order)
        assert params["signType"] == "RSA"
        message = "".join(params[k] + "\n" for k in ("appId", "timeStamp", "nonceStr", "package"))
        merchant_public = shop.fake.keys.merchant.public_key()
        assert verify_v3(merchant_public, message, params["paySign"])
        assert shop.fake.orders[-1]["payer"] == {"openid": "o1"}


def test_not_configured_mounts_nothing() -> None:
    app = web.Application()
    assert adapter.install(object(), Settings(_env_file=None), app) is None
    assert not list(app.router.routes())


def test_qr_png_is_a_png() -> None:
    data = qr_png("weixin://wxpay/bizpayurl?pr=abc")
    assert data.startswith(b"\x89PNG")
    assert png.Reader(file=io.BytesIO(data)).read()[0] > 0


# --- offering a top-up ----------------------------------------------------------------------


def test_amounts_are_typed_in_cny_and_kept_in_fen() -> None:
    assert [parse_fen(t) for t in ("10", "9.9", "0.01", "¥5", "12.34元")] == [
        1000,
        990,
        1,
        500,
        1234,
    ]
    for bad in ("0", "0.001", "-1", "abc", "1e3", "10,5", "１０", "999999"):
        with pytest.raises(ValueError):
            parse_fen(bad)


async def test_native_offer_is_a_qr_code_with_a_bilingual_caption(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        offer = await adapter.start_topup(shop.pay, "telegram", "7", "9.9", chat_id="-100")
        assert offer.order.trade_type == "NATIVE" and offer.order.fen == 990
        assert offer.qr_png is not None and offer.qr_png.startswith(b"\x89PNG")
        assert "¥9.90" in offer.text and "99000 credits" in offer.text and "积分" in offer.text
        await shop.notify(fake.notify_v2(offer.order.out_trade_no, 990))
        assert (await sqlite_bank.wallet.balance("wechat:7")).total == 0
        assert (await sqlite_bank.wallet.balance("telegram:7")).total == 990 * MILLI_PER_FEN
        [told] = shop.core.delivered
        assert (told.platform, told.chat_id) == ("telegram", "-100")


async def test_jsapi_offer_links_to_a_pay_page_inside_wechat(
    sqlite_bank: Bank, tmp_path: Path
) -> None:
    async with open_shop(sqlite_bank, tmp_path) as shop:
        offer = await adapter.start_topup(shop.pay, "wechat", "o42", "1", openid="o42")
        otn = offer.order.out_trade_no
        assert offer.pay_url == f"https://bot.example.com/wechatpay/pay/{otn}"
        page_url = shop.notify_url.rsplit("/", 1)[0] + f"/pay/{otn}"
        page = await shop.http.get(page_url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "getBrandWCPayRequest" in page.text
        assert f"prepay_id={offer.order.prepay_id}" in page.text

        await shop.notify(fake.notify_v2(otn, 100))
        page = await shop.http.get(page_url)
        assert "Already paid" in page.text and "prepay_id" not in page.text
        missing = await shop.http.get(shop.notify_url.rsplit("/", 1)[0] + "/pay/nope")
        assert missing.status_code == 404
