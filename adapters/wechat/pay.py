"""WeChat Pay top-ups asked for in the chat: `/pay 10` or `充值 10` (CNY).

The order is made for the wallet of platform "wechat" and the user's openid, which is also
the payer's openid for JSAPI (the Official Account and the merchant share WECHAT_APPID).
What the user gets depends on what one answer can carry:

- passive mode (one reply per message): a text with the link to the JSAPI pay page; the user
  is inside WeChat, so tapping it opens WeChat Pay.
- customer-service mode: also a Native order's QR code, uploaded as temporary media and sent
  as an image, for paying from another device (WeChat on a PC, a friend's phone). The two
  orders are two ways to pay the same amount: whichever is paid is credited, the other expires
  unpaid.

The payment service is looked up in the aiohttp app at request time: WeChat Pay installs after
this front end, and is absent when not configured (then the user hears about /topup CODE).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable

from adapters.wechat import texts
from adapters.wechat.api import WeChatApi, WeChatApiError
from adapters.wechat.conversation import PLATFORM
from adapters.wechat.delivery import Item, text_item
from adapters.wechat.wechatpay import start_topup
from billing.money import MAX_TOPUP_FEN, MIN_TOPUP_FEN, format_credits, format_fen, topup_fen
from bot.payments.wechatpay import WeChatPay
from bot.providers.wechatpay import PaymentError

log = logging.getLogger(__name__)

# "/pay" takes anything after it (a wrong amount is refused, not chatted about); "充值" only
# alone or before something that starts like an amount, so "充值卡怎么买" stays a question.
_PAY = re.compile(r"^\s*/pay(?:@\S+)?(?:\s+(?P<amount>.*?))?\s*$", re.S | re.I)
_CHONGZHI = re.compile(r"^\s*充值\s*[:：]?\s*(?P<amount>(?:[¥￥+\-.\d].*?)?)\s*$", re.S)

PayLookup = Callable[[], WeChatPay | None]


def pay_amount(text: str) -> str | None:
    """The amount of a top-up request ("" when none was given); None if `text` is not one.

    Full-width digits and the ideographic full stop count as typed ("１０", "9。9").
    """
    normal = unicodedata.normalize("NFKC", text).replace("。", ".")
    m = _PAY.match(normal) or _CHONGZHI.match(normal)
    if m is None:
        return None
    return (m.group("amount") or "").strip()


class TopUps:
    """Turns a top-up request into the WeChat items to send the user."""

    def __init__(self, lookup: PayLookup, api: WeChatApi, *, with_qr: bool) -> None:
        self.lookup = lookup
        self.api = api
        self.with_qr = with_qr

    @staticmethod
    def amount(text: str) -> str | None:
        return pay_amount(text)

    @property
    def configured(self) -> bool:
        return self.lookup() is not None

    def help_footer(self, text: str) -> str:
        """How to pay, for the end of /help, /start and a bare /topup (when WeChat Pay is on)."""
        words = text.strip().lower().split()
        if not words or not self.configured:
            return ""
        head = words[0].split("@", 1)[0]
        if head in ("/help", "/start") or (head == "/topup" and len(words) == 1):
            return texts.pay_help()
        return ""

    async def offer(self, openid: str, amount: str) -> list[Item]:
        pay = self.lookup()
        if pay is None:
            return [text_item(texts.pay_not_configured())]
        if not amount:
            return [text_item(texts.pay_usage(MIN_TOPUP_FEN // 100, MAX_TOPUP_FEN // 100))]
        try:
            fen = topup_fen(amount)  # exact; 1 to 5,000 CNY, at most 2 decimals
        except ValueError:
            return [text_item(texts.pay_bad_amount(MIN_TOPUP_FEN // 100, MAX_TOPUP_FEN // 100))]
        cny = format_fen(fen)
        try:
            link = await start_topup(pay, PLATFORM, openid, cny, chat_id=openid, openid=openid)
        except PaymentError as exc:
            log.warning("wechat: top-up order failed: %s", exc)
            return [text_item(texts.pay_unavailable())]
        image = await self._qr(pay, openid, cny) if self.with_qr else None
        assert link.pay_url is not None
        credits = format_credits(link.order.amount_milli)
        minutes = max(pay.config.order_ttl // 60, 1)
        text = texts.pay_link(cny, credits, link.pay_url, minutes, with_qr=image is not None)
        return [*([image] if image else []), text_item(text)]

    async def _qr(self, pay: WeChatPay, openid: str, cny: str) -> Item | None:
        """A Native order's QR code as uploaded media; None if WeChat Pay or WeChat would not
        have it (the link still works, so the top-up goes on without the picture)."""
        try:
            native = await start_topup(pay, PLATFORM, openid, cny, chat_id=openid)
            if native.qr_png is None:
                return None
            media_id = await self.api.upload_image(
                native.qr_png, f"{native.order.out_trade_no}.png", "image/png"
            )
        except (PaymentError, WeChatApiError) as exc:
            log.warning("wechat: no QR code for the top-up: %s", exc)
            return None
        return Item("image", media_id=media_id)
