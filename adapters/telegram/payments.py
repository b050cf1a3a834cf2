"""Telegram Stars top-ups: invoices, the pre-checkout check, crediting, and the admin refund.

Credit moves only on `successful_payment`, through the core, keyed by Telegram's charge id
("tgstars:<charge_id>"), so a payment delivered twice is credited once. Telegram delivers a
payment once: before crediting, it is written down as pending (`tgstars:pending:<charge_id>`,
listed in `tgstars:pending`) and struck off only once credited, so a payment whose crediting
failed (a store or database error) is credited by `retry_pending`, which the front end runs at
start and periodically. `/refundstars` takes the credits back first and refunds the Stars only
after that succeeded, so a failure never leaves the Stars refunded and the credits kept.
The pre-checkout query is answered at once (Telegram allows 10 s) after checking the
payload, currency and amount.
`/topup CODE` is not ours: it goes to the core like any command.
"""

from __future__ import annotations

import json
import logging

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import LabeledPrice, PreCheckoutQuery
from aiogram.types import Message as TgMessage

from adapters.telegram.context import PLATFORM, TelegramContext
from adapters.telegram.inbound import ForBot, command_args, target_of
from adapters.telegram.replies import converse
from adapters.telegram.stars import CURRENCY, check_purchase, encode_payload
from adapters.telegram.streaming import send_text
from adapters.telegram.texts import tr
from billing.money import format_credits
from bot.api import CoreAPI

log = logging.getLogger(__name__)


PENDING = "tgstars:pending"  # set of charge ids paid but maybe not yet credited


def charge_key(charge_id: str) -> str:
    """The wallet idempotency key of one Stars payment."""
    return f"tgstars:{charge_id}"


def pending_key(charge_id: str) -> str:
    return f"{PENDING}:{charge_id}"


async def credit_paid(
    core: CoreAPI, charge: str, user_id: str, credits_milli: int, stars: int
) -> None:
    """Credit one paid charge, written down as pending until the credit is confirmed."""
    record = {"user_id": user_id, "credits_milli": credits_milli, "stars": stars}
    await core.kv.set(pending_key(charge), json.dumps(record))
    await core.kv.sadd(PENDING, charge)
    await core.credit_payment(
        PLATFORM,
        user_id,
        credits_milli,
        key=charge_key(charge),
        reason="Telegram Stars",
        meta={"stars": stars, "charge_id": charge, "provider": "telegram_stars"},
    )
    await core.kv.srem(PENDING, charge)
    await core.kv.delete(pending_key(charge))


async def retry_pending(core: CoreAPI) -> int:
    """Credit every payment whose crediting failed earlier (once each); returns how many."""
    done = 0
    for charge in sorted(await core.kv.smembers(PENDING)):
        raw = await core.kv.get(pending_key(charge))
        if raw is None:
            await core.kv.srem(PENDING, charge)
            continue
        try:
            record = json.loads(raw)
            await credit_paid(
                core,
                charge,
                str(record["user_id"]),
                int(record["credits_milli"]),
                int(record.get("stars", 0)),
            )
        except Exception:
            log.exception("crediting pending Stars payment %s failed; will retry", charge)
            continue
        log.info("credited pending Stars payment %s", charge)
        done += 1
    return done


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
    await credit_paid(core, charge, str(user.id), purchase.pack.credits_milli, purchase.pack.stars)
    # A redelivered payment is credited once by its key; the receipt goes out once too.
    if await core.kv.add(f"tgstars:receipt:{charge}", "1", ttl=tg.dedupe_ttl):
        credits = format_credits(purchase.pack.credits_milli)
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
        entry = await core.reverse_payment(charge_key(charge), reason="Telegram Stars refund")
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
