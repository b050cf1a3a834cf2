"""WeChat Pay on the bot's aiohttp app: the notification endpoint, the pay page, top-up offers.

`install(core, settings, app)` adds `POST settings.wechatpay_notify_path` and returns a front
end whose `start()` adds reconciliation to the core's scheduler: every minute it reconciles
open orders with WeChat Pay (`WeChatPay.reconcile`: a paid order whose notification was lost is
credited, an unpaid one is closed at its deadline and expired once WeChat Pay's answer names it
closed). Stopping it mid-pass is safe: every step is idempotent and the next pass resumes. The
orders live in `bot/payments/wechatpay.py` (on the payment inbox) and the protocol in
`bot/providers/wechatpay/`; this module only speaks HTTP: v2 answers XML SUCCESS/FAIL, v3
answers 204 (no body) or 4xx with {"code": "FAIL", "message": ...}.

The `WeChatPay` service is also put at `app[APP_KEY]`; a front end offers a top-up with
`start_topup(pay, platform, user_id, "10", openid=...)`: a Native order's QR code PNG to send
as an image, or (inside WeChat, with the user's openid) a link to the JSAPI pay page this
module serves at `/wechatpay/pay/<out_trade_no>` (next to the notify path; `pay_page`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from adapters.wechat.pay_page import jsapi_page, qr_png
from billing.money import fen_to_milli, format_credits, format_fen, topup_fen
from bot.api import CoreAPI
from bot.events import Delivery, Notice
from bot.payments.wechatpay import RECONCILE_JOB, RECONCILE_SECONDS, Order, WeChatPay
from bot.providers.wechatpay import PayConfig
from bot.scheduler import Scheduler

log = logging.getLogger(__name__)

APP_KEY = web.AppKey("wechatpay", WeChatPay)
MAX_BODY = 64 * 1024


class WeChatPayFrontEnd:
    """Holds the service; start/stop add and cancel its reconciliation on the scheduler."""

    def __init__(
        self, pay: WeChatPay, scheduler: Scheduler, sweep_seconds: float = RECONCILE_SECONDS
    ) -> None:
        self.pay = pay
        self.scheduler = scheduler
        self.sweep_seconds = sweep_seconds

    async def start(self) -> None:
        self.scheduler.every(RECONCILE_JOB, self.sweep_seconds, self.pay.reconcile, at_start=True)

    async def stop(self) -> None:
        await self.scheduler.cancel(RECONCILE_JOB)
        await self.pay.close()


def notify_handler(pay: WeChatPay) -> Any:
    """The aiohttp handler for payment notifications (v2 XML or v3 JSON)."""

    async def handle(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.Response(status=413)
        try:
            answer = await pay.handle(dict(request.headers), body)
        except Exception:
            # Crediting failed (storage down): answer FAIL so WeChat Pay retries later.
            log.exception("wechatpay notification failed")
            return web.Response(
                status=500,
                body=b'{"code":"FAIL","message":"internal error"}',
                content_type="application/json",
            )
        if answer.status == 204:
            return web.Response(status=204)
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type
        )

    return handle


@dataclass(frozen=True, slots=True)
class TopupOffer:
    """What a front end shows a user who asked to pay: a QR image or a link, and a caption."""

    order: Order
    text: str  # bilingual caption
    qr_png: bytes | None = None  # Native: scan (or long-press in WeChat) to pay
    pay_url: str | None = None  # JSAPI: open inside WeChat to pay


def page_path(notify: str) -> str:
    """Where JSAPI pay pages live: beside the notify path or URL (".../wechatpay/pay")."""
    return notify.rstrip("/").rsplit("/", 1)[0] + "/pay"


async def start_topup(
    pay: WeChatPay,
    platform: str,
    user_id: str,
    amount: str,
    *,
    chat_id: str | None = None,
    openid: str | None = None,
) -> TopupOffer:
    """Create an order of `amount` CNY ("10", "9.9") for the user.

    With `openid` (the user is inside WeChat, on the merchant's app id) the order is JSAPI
    and the offer is a link to the pay page (beside WECHATPAY_NOTIFY_URL); otherwise it is a
    Native order and the offer is a QR code PNG. Raises ValueError for a bad amount (below
    1 CNY or above 5,000: billing.money.topup_fen),
    PaymentError when WeChat Pay refuses.
    """
    fen = topup_fen(amount)
    credits = format_credits(fen_to_milli(fen))
    cny = format_fen(fen)
    if openid:
        order = await pay.create_order(
            platform, user_id, fen, trade_type="JSAPI", openid=openid, chat_id=chat_id
        )
        url = f"{page_path(pay.config.notify_url)}/{order.out_trade_no}"
        text = f"Pay ¥{cny} for {credits} credits: {url}\n支付 ¥{cny} 购买 {credits} 积分：{url}"
        return TopupOffer(order, text, pay_url=url)
    order = await pay.create_order(platform, user_id, fen, trade_type="NATIVE", chat_id=chat_id)
    assert order.code_url is not None
    minutes = pay.config.order_ttl // 60
    text = (
        f"Scan with WeChat to pay ¥{cny} for {credits} credits (valid {minutes} min).\n"
        f"请用微信扫码支付 ¥{cny}，购买 {credits} 积分（{minutes} 分钟内有效）。"
    )
    return TopupOffer(order, text, qr_png=qr_png(order.code_url))


def page_handler(pay: WeChatPay) -> Any:
    """GET the JSAPI pay page of one order (only the payer's openid can pay it anyway)."""

    async def handle(request: web.Request) -> web.Response:
        order = await pay.get_order(request.match_info["order"])
        if order is None or order.trade_type != "JSAPI":
            return web.Response(status=404, text="no such order / 订单不存在")
        return web.Response(
            text=jsapi_page(pay, order),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    return handle


def _tell_user(core: CoreAPI) -> Callable[[Order], Awaitable[None]]:
    """Tell the payer their credits arrived, through the core's sink for their platform."""

    async def on_paid(order: Order) -> None:
        credits = format_credits(order.amount_milli)
        text = f"Payment received: +{credits} credits.\n支付成功：+{credits} 积分。"
        chat = order.extra.get("chat_id") or order.user_id
        await core.deliver(Delivery(order.platform, order.user_id, str(chat), Notice(text)))

    return on_paid


def install(core: CoreAPI, settings: Any, app: web.Application) -> WeChatPayFrontEnd | None:
    """Mount the notify endpoint when WeChat Pay is configured; None otherwise.

    `core` is the core as every adapter sees it (`bot.api.CoreAPI`).
    """
    config = PayConfig.from_settings(settings)
    if not config.configured:
        return None
    pay = WeChatPay(config, core.kv, core.credit_payment, on_paid=_tell_user(core))
    app[APP_KEY] = pay
    app.router.add_post(settings.wechatpay_notify_path, notify_handler(pay))
    app.router.add_get(page_path(settings.wechatpay_notify_path) + "/{order}", page_handler(pay))
    return WeChatPayFrontEnd(pay, core.scheduler)
