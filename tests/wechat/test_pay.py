"""WeChat Pay top-ups asked for in the WeChat chat, end to end: the real Core and HTTP app
(front ends installed as `creditbot run` does), a SQLite wallet, the fake WeChat API and the
fake WeChat Pay order API. 10 CNY = 100,000 credits = 100,000,000 millicredits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from adapters.http import build_app, install_front_ends
from adapters.wechat import WeChatFrontEnd
from adapters.wechat.pay import pay_amount
from bot.assemble import assemble
from bot.core import Core
from fakes import wechatpay as fakepay
from fakes.server import serve as served
from fakes.wechat_api import FakeWeChat
from fakes.wechat_client import WeChatServer, event_xml, next_msg_id, text_xml, wait_for
from tests.wechat.conftest import TIMING, TOKEN, wechat_settings

TEN_CNY_MILLI = 100_000 * 1000
LINK = re.compile(r"https://bot\.example\.com/wechatpay/pay/(\w+)")


@dataclass
class PayBot:
    core: Core
    front: WeChatFrontEnd
    wechat: WeChatServer  # plays WeChat's server posting callbacks
    api: FakeWeChat  # the WeChat API the bot sends messages and uploads media to
    wxpay: fakepay.FakeWeChatPay
    base: str  # the bot's HTTP server
    http: httpx.AsyncClient

    async def say(self, openid: str, text: str) -> str | None:
        """One message; the passive reply's text (None in customer-service mode)."""
        reply = await self.wechat.post(text_xml(openid, text, next_msg_id()))
        assert reply is not None and reply.status == 200
        return reply.content

    async def notify(self, body: bytes) -> httpx.Response:
        return await self.http.post(f"{self.base}/wechatpay/notify", content=body)

    async def balance(self, openid: str) -> int:
        account = await self.core.account_of("wechat", openid)
        return (await self.core.wallet.balance(account)).total


@asynccontextmanager
async def pay_bot(
    sqlite_url: str, *, mode: str, wechat_pay: bool = True, v3_keys_in: Path | None = None
) -> AsyncIterator[PayBot]:
    """The bot with WeChat Pay on API v2, or on v3 when given a folder for the key files."""
    api = await FakeWeChat(appid=fakepay.APPID).start()
    keys = fakepay.Keys()
    wxpay = fakepay.FakeWeChatPay(keys)
    pay: dict[str, Any] = {}
    try:
        async with served(wxpay.app) as pay_base:
            if wechat_pay:
                pay = {
                    "wechatpay_mchid": fakepay.MCHID,
                    "wechatpay_api_key": fakepay.API_KEY,
                    "wechatpay_notify_url": "https://bot.example.com/wechatpay/notify",
                    "wechatpay_api_base": pay_base,
                }
            if wechat_pay and v3_keys_in is not None:
                (v3_keys_in / "platform.pem").write_bytes(keys.platform_cert)
                (v3_keys_in / "merchant.pem").write_bytes(fakepay.pem_private(keys.merchant))
                pay |= {
                    "wechatpay_api_v3_key": fakepay.API_V3_KEY,
                    "wechatpay_platform_cert": v3_keys_in / "platform.pem",
                    "wechatpay_private_key": v3_keys_in / "merchant.pem",
                    "wechatpay_cert_serial": keys.serial,
                }
            settings = wechat_settings(
                api.url,
                mode=mode,
                wechat_appid=fakepay.APPID,  # the account and the merchant share the app id
                wallet_url=sqlite_url,
                demo_credits=0,
                sweep_interval_seconds=3600,
                **pay,
            )
            core = await assemble(settings)
            app = build_app(core)
            fronts = install_front_ends(core, settings, app)
            [front] = [f for f in fronts if isinstance(f, WeChatFrontEnd)]
            front.timing = TIMING
            runner = web.AppRunner(app, handler_cancellation=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            for f in fronts:
                await f.start()
            try:
                async with aiohttp.ClientSession() as session, httpx.AsyncClient() as http:
                    wechat = WeChatServer(base + settings.wechat_path, TOKEN, session=session)
                    yield PayBot(core, front, wechat, api, wxpay, base, http)
            finally:
                for f in fronts:
                    await f.stop()
                await runner.cleanup()
                await core.close()
    finally:
        await api.close()


async def test_customer_service_top_up_sends_qr_and_link_and_credits_once(
    sqlite_url: str,
) -> None:
    async with pay_bot(sqlite_url, mode="customer_service") as bot:
        user = "o-pay-cs"
        assert await bot.say(user, "充值 10") is None  # acknowledged; the offer follows
        await wait_for(lambda: bot.api.texts_to(user))

        # Two ways to pay the same 10 CNY: a JSAPI order for this user (the link) and a
        # Native order (its QR code, uploaded and sent as an image before the link).
        orders = {o["trade_type"]: o for o in bot.wxpay.orders}
        assert sorted(orders) == ["JSAPI", "NATIVE"]
        assert all(o["total_fee"] == "1000" and o["fee_type"] == "CNY" for o in orders.values())
        assert orders["JSAPI"]["openid"] == user
        [media] = bot.api.images_to(user)
        assert [u["id"] for u in bot.api.uploads] == [media]
        kinds = [m["msgtype"] for m in bot.api.sent]
        assert kinds == ["image", "text"]
        [offer] = bot.api.texts_to(user)
        assert "¥10.00" in offer and "100000" in offer and "积分" in offer and "credits" in offer
        link = LINK.search(offer)
        assert link is not None and link.group(1) == orders["JSAPI"]["out_trade_no"]

        # The link opens the JSAPI pay page on the bot's own server.
        page = await bot.http.get(f"{bot.base}/wechatpay/pay/{link.group(1)}")
        assert page.status_code == 200 and "getBrandWCPayRequest" in page.text

        # WeChat Pay confirms the QR order, twice: credited once, told once.
        note = fakepay.notify_v2(orders["NATIVE"]["out_trade_no"], 1000)
        for _ in range(2):
            answer = await bot.notify(note)
            assert answer.status_code == 200 and b"SUCCESS" in answer.content
        assert await bot.balance(user) == TEN_CNY_MILLI
        told = [t for t in bot.api.texts_to(user) if "Payment received" in t]
        assert told == ["Payment received: +100000 credits.\n支付成功：+100000 积分。"]

        assert await bot.say(user, "/balance") is None
        await wait_for(lambda: len(bot.api.texts_to(user)) == 3)
        assert "100000" in bot.api.texts_to(user)[-1]


async def test_passive_top_up_answers_with_the_link_and_credits_once(sqlite_url: str) -> None:
    async with pay_bot(sqlite_url, mode="passive") as bot:
        user = "o-pay-passive"
        offer = await bot.say(user, "/pay 10")
        assert offer is not None and "¥10.00" in offer and "100000" in offer
        [order] = bot.wxpay.orders  # one reply, one message: the JSAPI link
        assert order["trade_type"] == "JSAPI" and order["total_fee"] == "1000"
        assert order["openid"] == user
        link = LINK.search(offer)
        assert link is not None and link.group(1) == order["out_trade_no"]
        assert bot.api.uploads == [] and bot.api.sent == []

        note = fakepay.notify_v2(order["out_trade_no"], 1000)
        for _ in range(3):
            assert b"SUCCESS" in (await bot.notify(note)).content
        assert await bot.balance(user) == TEN_CNY_MILLI

        # Passive mode cannot speak first: the news waits for the user's next message.
        balance = await bot.say(user, "/balance")
        assert balance is not None and "100000" in balance and "reply 1" in balance
        told = await bot.say(user, "1")
        assert told is not None and "Payment received: +100000 credits" in told
        assert await bot.balance(user) == TEN_CNY_MILLI


async def test_a_bad_amount_is_refused_without_an_order(sqlite_url: str) -> None:
    async with pay_bot(sqlite_url, mode="passive") as bot:
        for text in ("充值 0", "充值 0.5", "/pay 10.001", "/pay 5000.01", "充值 -5", "/pay ten"):
            answer = await bot.say("o-pay-bad", text)
            assert answer is not None and "金额无效" in answer and "Invalid amount" in answer
        assert bot.wxpay.orders == []
        assert await bot.balance("o-pay-bad") == 0


async def test_wechat_pay_refusing_the_order_is_said_plainly(sqlite_url: str) -> None:
    async with pay_bot(sqlite_url, mode="customer_service") as bot:
        pay = bot.front.topups.lookup()
        assert pay is not None
        pay.config.api_key = "not-the-merchant-key"  # WeChat Pay refuses the signature
        await bot.say("o-pay-refused", "充值 10")
        await wait_for(lambda: bot.api.texts_to("o-pay-refused"))
        [said] = bot.api.texts_to("o-pay-refused")
        assert "/topup" in said and "try again later" in said
        assert bot.wxpay.orders == [] and bot.api.images_to("o-pay-refused") == []


async def test_a_wechat_pay_answer_that_does_not_verify_gives_no_pay_link(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with pay_bot(sqlite_url, mode="passive", v3_keys_in=tmp_path) as bot:
        user = "o-pay-forged"
        for fault in ("badsig", "unsigned", "stale"):
            bot.wxpay.misbehave("order", fault)
            said = await bot.say(user, "/pay 10")
            assert said is not None and LINK.search(said) is None, fault
            assert "try again later" in said and "请稍后再试" in said
        assert len(bot.wxpay.orders) == 3  # asked each time, and the answer not believed
        assert await bot.core.kv.smembers("wxpay:open") == set()

        # Answered with the platform's signature, the same request gives the pay link.
        said = await bot.say(user, "/pay 10")
        link = LINK.search(said or "")
        assert link is not None and link.group(1) == bot.wxpay.orders[-1]["out_trade_no"]
        assert await bot.core.kv.smembers("wxpay:open") == {link.group(1)}
        assert await bot.balance(user) == 0


async def test_amounts_as_people_type_them(sqlite_url: str) -> None:
    async with pay_bot(sqlite_url, mode="passive") as bot:
        for text in ("充值１０", "充值 ¥9.9", "/PAY 5000", "充值：1"):
            answer = await bot.say("o-pay-typed", text)
            assert answer is not None and LINK.search(answer), text
        assert [o["total_fee"] for o in bot.wxpay.orders] == ["1000", "990", "500000", "100"]
        # Without an amount: how to use it.
        usage = await bot.say("o-pay-typed", "充值")
        assert usage is not None and "/pay 10" in usage and "充值 10" in usage
        assert len(bot.wxpay.orders) == 4
    # Words after 充值 that are no amount are a question for the AI, not a top-up.
    assert pay_amount("充值卡怎么买") is None and pay_amount("/payment 10") is None


async def test_without_wechat_pay_the_user_hears_about_codes(sqlite_url: str) -> None:
    async with pay_bot(sqlite_url, mode="passive", wechat_pay=False) as bot:
        answer = await bot.say("o-pay-off", "充值 10")
        assert answer is not None and "/topup" in answer and "WeChat Pay" in answer
        assert bot.wxpay.orders == []
        help_text = await bot.say("o-pay-off", "/help")
        assert help_text is not None and "/pay" not in help_text


async def test_help_and_welcome_mention_pay_when_configured(sqlite_url: str) -> None:
    async with pay_bot(sqlite_url, mode="passive") as bot:
        help_text = await bot.say("o-pay-help", "/help")
        assert help_text is not None and "/pay 10" in help_text and "充值 10" in help_text
        reply = await bot.wechat.post(event_xml("o-pay-new", "subscribe", 1_700_000_000))
        assert reply is not None and reply.content is not None and "/pay 10" in reply.content
