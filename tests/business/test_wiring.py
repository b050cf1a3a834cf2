"""The business parts inside the real bot: the Core's /topup and the HTTP app's endpoints."""

from __future__ import annotations

from pathlib import Path

import httpx

from adapters.http import build_app, install_front_ends
from adapters.wechat import wechatpay as adapter
from bot.assemble import assemble
from bot.codes import create_codes
from bot.events import Delivery, FinalText, Message, Notice
from bot.settings import Settings
from fakes import wechatpay as fake
from fakes.server import serve as served


async def test_topup_code_and_wechat_pay_through_the_running_bot(
    sqlite_url: str, tmp_path: Path
) -> None:
    wxpay = fake.FakeWeChatPay(fake.Keys())
    async with served(wxpay.app) as api_base:
        settings = Settings(
            _env_file=None,
            wallet_url=sqlite_url,
            demo_credits=0,
            wechat_appid=fake.APPID,
            wechatpay_mchid=fake.MCHID,
            wechatpay_api_key=fake.API_KEY,
            wechatpay_notify_url="https://bot.example.com/wechatpay/notify",
            wechatpay_api_base=api_base,
        )
        core = await assemble(settings)
        delivered: list[Delivery] = []

        async def sink(d: Delivery) -> None:
            delivered.append(d)

        core.set_sink("wechat", sink)
        app = build_app(core)
        fronts = install_front_ends(core, settings, app)
        try:
            # A user redeems a code bought from the operator, typed loosely.
            [made] = await create_codes(core.kv, 10_000_000, 1)
            typed = made.code.lower().replace("-", "")
            msg = Message("telegram", "5", "5", "m1", f"/topup {typed}", language="en")
            events = [e async for e in core.handle(msg)]
            assert isinstance(events[-1], FinalText) and "10000" in events[-1].text
            again = Message("telegram", "6", "6", "m2", f"/topup {made.code}", language="zh")
            events = [e async for e in core.handle(again)]
            assert isinstance(events[-1], Notice) and events[-1].kind == "error"
            assert (await core.wallet.balance("telegram:5")).total == 10_000_000
            assert (await core.wallet.balance("telegram:6")).total == 0

            # A WeChat user pays 1 CNY; WeChat Pay's notification reaches the bot's HTTP app.
            pay = app[adapter.APP_KEY]
            order = await pay.create_order("wechat", "o42", 100)
            async with served(app) as base, httpx.AsyncClient() as http:
                for front in fronts:
                    await front.start()
                note = fake.notify_v2(order.out_trade_no, 100)
                for _ in range(2):
                    r = await http.post(base + settings.wechatpay_notify_path, content=note)
                    assert r.status_code == 200 and b"SUCCESS" in r.content
                assert (await http.get(base + "/healthz")).status_code == 200
                # The business figures are not on the public port (see test_metrics_exposure).
                assert (await http.get(base + "/metrics")).status_code == 404
                for front in fronts:
                    await front.stop()
            account = await core.account_of("wechat", "o42")
            assert (await core.wallet.balance(account)).total == 10_000_000  # 1 CNY
            [told] = delivered
            assert told.user_id == "o42" and "10000" in told.event.text
        finally:
            await core.close()
