"""Telegram Stars payments on the payment inbox: each paid charge is credited exactly once.

Credit moves only on `successful_payment`, keyed by Telegram's charge id ("tgstars:<charge_id>"),
so a payment delivered twice is credited once. Telegram delivers a payment once: before
crediting, it is written down as pending (`tgstars:pending:<charge_id>`, listed in
`tgstars:pending`) and struck off only once credited, so a payment whose crediting failed (a
store or database error) is credited by `retry_pending`, which the scheduler runs while the
Telegram front end is up (at its start, then every PENDING_RETRY_SECONDS). A refund takes the
credits back through the inbox (`reverse`). The aiogram handlers are the Telegram adapter's.
"""

from __future__ import annotations

import logging
from typing import Any

from billing.wallet.base import Entry
from bot.payments.inbox import STARS, STARS_RECEIPT, PaymentInbox

log = logging.getLogger(__name__)

PLATFORM = "telegram"
PENDING_RETRY_SECONDS = 60.0  # how often Stars payments whose crediting failed are retried
RETRY_JOB = "telegram-stars-retry"  # its name on the scheduler

# The store keys of a pending payment, as named in bot/payments/inbox.py.
PENDING = STARS.open_set


def pending_key(charge_id: str) -> str:
    return STARS.record_key(charge_id)


def charge_key(charge_id: str) -> str:
    """The wallet idempotency key of one Stars payment."""
    return STARS.key(charge_id)


class StarsPayments:
    """Stars payments of Telegram users, through `inbox`."""

    def __init__(self, inbox: PaymentInbox) -> None:
        self.inbox = inbox

    async def credit(self, charge_id: str, user_id: str, credits_milli: int, stars: int) -> None:
        """Credit one paid charge, written down as pending until the credit is confirmed."""
        record = {"user_id": user_id, "credits_milli": credits_milli, "stars": stars}
        await self.inbox.record(STARS, charge_id, record)
        await self.inbox.credit(
            STARS,
            charge_id,
            PLATFORM,
            user_id,
            credits_milli,
            reason="Telegram Stars",
            meta={"stars": stars, "charge_id": charge_id, "provider": "telegram_stars"},
        )
        await self.inbox.confirm(STARS, charge_id)

    async def paid(
        self, charge_id: str, user_id: str, credits_milli: int, stars: int, *, receipt_ttl: float
    ) -> bool:
        """A `successful_payment`: credit it (once); True if its receipt is still to be sent.

        A redelivered payment is credited once by its key; the receipt goes out once too (for
        `receipt_ttl` seconds, the front end's redelivery window).
        """
        await self.credit(charge_id, user_id, credits_milli, stars)
        return await self.inbox.store.add(f"{STARS_RECEIPT}{charge_id}", "1", ttl=receipt_ttl)

    async def retry_pending(self) -> int:
        """Credit every payment whose crediting failed earlier (once each); returns how many."""
        return (await self.inbox.retry(STARS, self._settle)).settled

    async def _settle(self, charge_id: str, record: dict[str, Any]) -> bool:
        await self.credit(
            charge_id,
            str(record["user_id"]),
            int(record["credits_milli"]),
            int(record.get("stars", 0)),
        )
        log.info("credited pending Stars payment %s", charge_id)
        return True

    async def reverse(self, charge_id: str, *, reason: str) -> Entry:
        """Take a refunded charge's credits back (see PaymentInbox.reverse)."""
        return await self.inbox.reverse(charge_key(charge_id), reason=reason)
