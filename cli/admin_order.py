"""`creditbot admin order OUT_TRADE_NO`: look at one WeChat Pay order and settle it by hand.

Prints the order as the bot keeps it and WeChat Pay's answer to an order query (verified as the
bot verifies every answer), and credits the order if WeChat Pay says SUCCESS, through the same
checks and the same idempotency key (`wxpay:<out_trade_no>`) as a payment notification and the
bot's own reconciliation: an order already credited is never credited again. For a payment
whose notification was lost and that the bot could not settle on its own (WeChat Pay
unreachable for a long time, an order marked expired by an older version).

The command runs outside the bot, so it cannot message the user; their credits show in
/balance. Exits 1 when WeChat Pay cannot be asked or its answer does not match the order.
"""

from __future__ import annotations

import argparse

from billing.money import format_credits, format_fen
from billing.wallet.base import Wallet
from bot.accounts import Accounts
from bot.payments.wechatpay import WeChatPay
from bot.providers.wechatpay import NotifyRejected, PayConfig, PaymentError
from bot.settings import get_settings
from bot.store.base import Store
from cli.admin_common import Refused, bank_command


def register_admin(admin: argparse._SubParsersAction) -> None:
    p = admin.add_parser(
        "order",
        help="show a WeChat Pay order and WeChat Pay's answer; credit it if paid",
        description=(
            "Query WeChat Pay about one order and credit it if WeChat Pay says it was paid "
            "(once: the same key as its notification)."
        ),
    )
    p.add_argument("out_trade_no", metavar="OUT_TRADE_NO", help="the order number (cb...)")
    p.set_defaults(func=bank_command("order", _order))


async def _order(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    config = PayConfig.from_settings(get_settings())
    if not config.configured:
        raise Refused("WeChat Pay is not configured (WECHATPAY_MCHID, WECHAT_APPID, a key)")
    pay = WeChatPay(config, store, Accounts(store, wallet).credit_payment)
    try:
        order = await pay.get_order(args.out_trade_no)
        if order is None:
            raise Refused(f"no WeChat Pay order {args.out_trade_no!r} in the store")
        credits = format_credits(order.amount_milli)
        print(f"order      {order.out_trade_no} ({order.trade_type})")
        print(f"user       {order.platform}:{order.user_id}")
        print(f"amount     ¥{format_fen(order.fen)} = {credits} credits")
        print(f"created    {order.created_at}")
        print(f"expires    {order.expires_at}")
        print(f"local      {order.status}")
        try:
            state = await pay.query_order(order.out_trade_no)
        except PaymentError as exc:
            raise Refused(f"could not ask WeChat Pay: {exc}; nothing changed") from exc
        detail = f" (transaction {state.transaction_id})" if state.transaction_id else ""
        print(f"wechatpay  {state.state}{detail}")
        if state.state != "SUCCESS":
            print("result     not paid at WeChat Pay: nothing to credit")
            return 0
        try:
            credited = await pay.settle_queried(state)
        except NotifyRejected as exc:
            raise Refused(
                f"WeChat Pay's answer does not match the order ({exc.reason}); nothing credited"
            ) from exc
        if credited:
            print(f"result     credited +{credits} credits (key {order.key})")
        else:
            print(f"result     already credited (key {order.key}); nothing more")
        return 0
    finally:
        await pay.close()
