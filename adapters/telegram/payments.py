"""Telegram Stars top-ups: invoices, the pre-checkout check, crediting, and the admin refund.

Credit moves only on `successful_payment`, through the core (`stars_paid`: the payment inbox,
bot/payments/stars.py), keyed by Telegram's charge id, so a payment delivered twice is credited
once and a payment whose crediting failed is credited later by the core's Stars retry.
`/refundstars` takes the credits back first (`reverse_stars`) and refunds the Stars only after
that succeeded, so a failure never leaves the Stars refunded and the credits kept.
The pre-checkout query is answered at once (Telegram allows 10 s) after checking the
payload, currency and amount.
`/topup CODE` is not ours: it goes to the core like any command.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import LabeledPrice, PreCheckoutQuery
from aiogram.types import Message as TgMessage

from adapters.telegram.context import TelegramContext
from adapters.telegram.inbound import ForBot, command_args, target_of
from adapters.telegram.replies import converse
from adapters.telegram.stars import CURRENCY, check_purchase, encode_payload
from adapters.telegram.streaming import send_text
from adapters.telegram.texts import tr
from billing.money import format_credits
from bot.api import CoreAPI

log = logging.getLogger(__name__)


def build_router() -> Router:
    router = Router(name="payments")
    router.message.register(on_topup, Command("topup"), ForBot(commands=True))
    router.message.register(on_refund, Command("refundstars"), ForBot(commands=True))
    router.message.register(on_paid, F.successful_payment)
    router.pre_checkout_query.register(on_pre_checkout)
    return router


async def on_topup(
    message: TgMessage, bot: Bot, core: CoreAPI, tg: TelegramContext, text: str
) -> None:
    """The core's top-up text (or its code redemption), then one Stars invoice per pack."""
    await converse(core, bot, tg, message, text)
    if command_args(text) or not tg.packs or message.from_user is None:
        return
    user = message.from_user
    language = user.language_code
    for pack in tg.packs:
        credits = format_credits(pack.credits_milli)
        try:
            await bot.send_invoice(
                chat_id=message.chat.id,
                title=tr("invoice_title", language, credits=credits),
                description=tr("invoice_description", language, credits=credits, stars=pack.stars),
                payload=encode_payload(pack, user.id),
                currency=CURRENCY,
                prices=[
                    LabeledPrice(
                        label=tr("invoice_label", language, credits=credits), amount=pack.stars
                    )
                ],
                message_thread_id=message.message_thread_id if message.is_topic_message else None,
            )
        except TelegramAPIError as exc:
            log.warning("could not send a Stars invoice: %s", exc)
            return


async def on_pre_checkout(query: PreCheckoutQuery, tg: TelegramContext) -> None:
    purchase = check_purchase(
        query.invoice_payload,
        currency=query.currency,
        total_amount=query.total_amount,
        user_id=query.from_user.id,
        packs=tg.packs,
    )
    if purchase is None:
        log.warning("pre-checkout refused: payload or amount does not match a pack")
        await query.answer(ok=False, error_message=tr("payment_bad", query.from_user.language_code))
        return
    await query.answer(ok=True)


async def on_paid(message: TgMessage, bot: Bot, core: CoreAPI, tg: TelegramContext) -> None:
    payment = message.successful_payment
    user = message.from_user
    if payment is None or user is None:
        return
    language = user.language_code
    charge = payment.telegram_payment_charge_id
    purchase = check_purchase(
        payment.invoice_payload,
        currency=payment.currency,
        total_amount=payment.total_amount,
        user_id=user.id,
        packs=None,
    )
    target = target_of(message)
    if purchase is None:
        log.error("Stars payment %s does not match its payload; not credited", charge)
        await send_text(bot, tg, target, tr("payment_unknown", language, charge=charge))
        return
    # A redelivered payment is credited once by its key; the receipt goes out once too.
    pack = purchase.pack
    if await core.stars_paid(
        charge, str(user.id), pack.credits_milli, pack.stars, receipt_ttl=tg.dedupe_ttl
    ):
        credits = format_credits(pack.credits_milli)
        await send_text(bot, tg, target, tr("payment_ok", language, credits=credits))


async def on_refund(
    message: TgMessage, bot: Bot, core: CoreAPI, tg: TelegramContext, text: str
) -> None:
    """/refundstars USER_ID CHARGE_ID (admins): take the credits back, then refund the Stars.

    In that order: if the Stars refund fails the credits are already gone and the operator is
    told to try again (the reversal is idempotent); the other order could refund the Stars
    and leave the credits spendable.
    """
    user = message.from_user
    if user is None:
        return
    language = user.language_code
    target = target_of(message)
    if str(user.id) not in tg.admin_ids:
        await send_text(bot, tg, target, tr("admin_only", language))
        return
    args = command_args(text).split()
    if len(args) != 2 or not args[0].isdigit():
        await send_text(bot, tg, target, tr("refund_usage", language))
        return
    buyer, charge = int(args[0]), args[1]
    try:
        entry = await core.reverse_stars(charge, reason="Telegram Stars refund")
    except Exception as exc:  # the core says why (unknown payment, credits already spent...)
        log.warning("Stars %s not refunded: its credits could not be taken back: %s", charge, exc)
        await send_text(bot, tg, target, tr("refund_reverse_failed", language, error=str(exc)))
        return
    try:
        await bot.refund_star_payment(user_id=buyer, telegram_payment_charge_id=charge)
    except TelegramAPIError as exc:
        message = getattr(exc, "message", str(exc))
        if "ALREADY_REFUNDED" not in message.upper():
            log.warning("Stars %s: credits taken back, Stars refund failed: %s", charge, message)
            await send_text(bot, tg, target, tr("refund_failed", language, error=message))
            return
    credits = format_credits(abs(entry.amount))
    await send_text(bot, tg, target, tr("refund_ok", language, charge=charge, credits=credits))
