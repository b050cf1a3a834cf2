"""The payment inbox: every payment from outside (Telegram Stars, WeChat Pay) comes in here.

A payment is known by its provider and the provider's id for it (a Stars charge id, a WeChat
Pay out_trade_no). Its wallet idempotency key is "<provider>:<id>" ("tgstars:<charge>",
"wxpay:<out_trade_no>"), so crediting it again credits nothing more. Its way in:

1. record: written down as pending (a JSON record, listed in the provider's open set) before
   any money moves, so a crash or a failing store between payment and credit loses nothing;
2. credit once: through the core's `credit_payment`, under the payment's key (the payer's
   account pinned, so a retry after a /link credits the same wallet: `Accounts`);
3. confirm: struck off the open set. A provider whose record is the operator's view (WeChat
   Pay's order) keeps it and writes a paid marker beside it, whose first writer is the first
   confirmation; otherwise (Stars) the pending record is deleted;
4. retry: `retry` goes through the open set (a scheduled job) and settles each payment with
   the provider's own rule (Stars: credit it; WeChat Pay: ask WeChat Pay first);
5. reverse: a refunded payment's credits are taken back, once, from whichever wallet the
   payer uses now (`reverse`).

Every step is idempotent, so a step cut off (a crash, a cancelled job) is simply done again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from billing.wallet.base import CREDIT, DEBIT, Entry, IdempotencyConflict, InsufficientCredits
from bot.accounts import MAX_HOPS, Accounts
from bot.store import keys
from bot.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Provider:
    """Where one provider's payments live in the store (see the key section below)."""

    name: str  # the wallet key prefix: "<name>:<payment id>"
    open_set: str  # ids of payments recorded and not yet settled
    record_prefix: str  # record_prefix + id: the payment's JSON record
    paid_prefix: str | None = None  # paid_prefix + id: the paid marker, if the record stays

    def key(self, payment_id: str) -> str:
        """The wallet idempotency key of the payment's credit."""
        return f"{self.name}:{payment_id}"

    def record_key(self, payment_id: str) -> str:
        return f"{self.record_prefix}{payment_id}"

    def paid_key(self, payment_id: str) -> str:
        if self.paid_prefix is None:
            raise ValueError(f"{self.name} payments keep no paid marker")
        return f"{self.paid_prefix}{payment_id}"


# --- store keys of payments (named in bot/store/keys.py) ---------------------------------------

# Telegram Stars: a charge paid but maybe not yet credited, until its credit is confirmed.
STARS = Provider(
    name="tgstars", open_set=keys.STARS_PENDING, record_prefix=keys.STARS_PENDING_PREFIX
)
STARS_RECEIPT = keys.STARS_RECEIPT_PREFIX  # + charge id: the payer was sent the receipt
# WeChat Pay: the order (kept), its paid marker, and the orders not yet paid or expired.
WECHAT_PAY = Provider(
    name="wxpay",
    open_set=keys.WXPAY_OPEN,
    record_prefix=keys.WXPAY_ORDER_PREFIX,
    paid_prefix=keys.WXPAY_PAID_PREFIX,
)
WECHAT_PAY_NOT_FOUND = keys.WXPAY_NOT_FOUND_PREFIX  # + out_trade_no: "no such order" first seen
# Written by Accounts.credit_payment for every payment key; read here to reverse one.
PAY_ENTRY = keys.PAY_ENTRY_PREFIX  # + payment key: the id of the ledger entry that credited it
PAY_ACCOUNT = keys.PAY_ACCOUNT_PREFIX  # + payment key: the account it was credited to
REVERSE_ACCOUNT = keys.REVERSE_ACCOUNT_PREFIX  # + payment key: where its reversal takes from
REVERSAL = "reverse:"  # + payment key: the wallet idempotency key of its reversal (not a store key)

# --------------------------------------------------------------------------------------------

# Core.credit_payment(platform, user_id, amount_milli, *, key, reason, meta) -> Entry.
CreditFn = Callable[..., Awaitable[Entry]]
# A provider's rule for one open payment, given its record: True if it credited it now.
Settle = Callable[[str, dict[str, Any]], Awaitable[object]]


@dataclass(slots=True)
class Retried:
    """What one `retry` pass did."""

    open: set[str]  # the provider's open payments when the pass began
    settled: int = 0  # `settle` said it credited
    failed: int = 0  # `settle` raised: left open for the next pass


class PaymentInbox:
    """Record, credit once, confirm, retry and reverse payments, for any provider.

    `credit` is the core's `credit_payment` (or `Accounts.credit_payment` outside the bot);
    `accounts` is needed only to `reverse`.
    """

    def __init__(self, store: Store, credit: CreditFn, *, accounts: Accounts | None = None):
        self.store = store
        self._credit = credit
        self._accounts = accounts

    # -- record --

    async def record(self, provider: Provider, payment_id: str, record: Mapping[str, Any]) -> None:
        """Write a payment down as pending: its record, then its place in the open set."""
        await self.update(provider, payment_id, record)
        await self.store.sadd(provider.open_set, payment_id)

    async def update(self, provider: Provider, payment_id: str, record: Mapping[str, Any]) -> None:
        """Rewrite a payment's record (its place in the open set unchanged)."""
        await self.store.set(provider.record_key(payment_id), json.dumps(dict(record)))

    async def record_of(self, provider: Provider, payment_id: str) -> dict[str, Any] | None:
        raw = await self.store.get(provider.record_key(payment_id))
        return None if raw is None else json.loads(raw)

    async def paid_marker(self, provider: Provider, payment_id: str) -> dict[str, Any] | None:
        """What `confirm` wrote beside a kept record, or None while it is not confirmed."""
        raw = await self.store.get(provider.paid_key(payment_id))
        return json.loads(raw) if raw else None

    async def open(self, provider: Provider) -> set[str]:
        """The ids of the provider's payments recorded and not yet settled."""
        return await self.store.smembers(provider.open_set)

    async def discard(self, provider: Provider, payment_id: str) -> None:
        """Strike a payment off the open set with nothing credited (an expired order)."""
        await self.store.srem(provider.open_set, payment_id)

    # -- credit once, confirm --

    async def credit(
        self,
        provider: Provider,
        payment_id: str,
        platform: str,
        user_id: str,
        amount_milli: int,
        *,
        reason: str,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        """Credit the payment to the payer's wallet under its key: once, however often asked."""
        return await self._credit(
            platform, user_id, amount_milli, key=provider.key(payment_id), reason=reason, meta=meta
        )

    async def confirm(
        self, provider: Provider, payment_id: str, marker: Mapping[str, Any] | None = None
    ) -> bool:
        """Strike a credited payment off the open set; True if this was its first confirmation.

        A provider that keeps its record gets `marker` written beside it (first writer wins,
        which makes the first confirmation); otherwise the pending record is deleted.
        """
        if provider.paid_prefix is not None:
            first = await self.store.add(provider.paid_key(payment_id), json.dumps(marker or {}))
            await self.store.srem(provider.open_set, payment_id)
            return first
        await self.store.srem(provider.open_set, payment_id)
        await self.store.delete(provider.record_key(payment_id))
        return True

    # -- retry --

    async def retry(
        self, provider: Provider, settle: Settle, *, among: set[str] | None = None
    ) -> Retried:
        """One pass over the provider's open payments (or `among` them), in id order.

        A payment whose record is gone is struck off (there is nothing to credit it from).
        `settle(payment_id, record)` raising is logged, and the payment stays open for the next
        pass: a store or wallet failing, or the provider not answering, loses nothing.
        """
        ids = await self.open(provider) if among is None else among
        done = Retried(ids)
        for payment_id in sorted(ids):
            try:
                record = await self.record_of(provider, payment_id)
                if record is None:
                    await self.discard(provider, payment_id)
                elif await settle(payment_id, record):
                    done.settled += 1
            except Exception:
                done.failed += 1
                log.exception(
                    "settling payment %s failed; the next pass tries again",
                    provider.key(payment_id),
                    extra={"payment": provider.key(payment_id)},
                )
        return done

    # -- reverse --

    async def credited_entry(self, key: str) -> Entry | None:
        """The ledger entry that credited payment `key` (by its record, else by its wallet key)."""
        accounts = self._reversing()
        entry_id = await self.store.get(f"{PAY_ENTRY}{key}")
        if entry_id:
            entry = await accounts.wallet.get_entry(entry_id)
            if entry is not None:
                return entry
        account = await self.store.get(f"{PAY_ACCOUNT}{key}")
        if account is None:
            return None
        before = None
        for _ in range(50):  # the payment's account's ledger, newest first
            page = await accounts.wallet.entries(account, limit=200, before=before)
            for entry in page:
                if entry.key == key and entry.kind == CREDIT:
                    await self.store.set(f"{PAY_ENTRY}{key}", entry.id)
                    return entry
            if len(page) < 200:
                return None
            before = page[-1].created_at
        return None

    async def reverse(self, key: str, *, reason: str) -> Entry:
        """Take a refunded payment's credits back (as much as is still available).

        Raises LookupError for an unknown payment key, InsufficientCredits when nothing is
        left to take back. The same key again returns the first reversal.
        """
        accounts = self._reversing()
        entry = await self.credited_entry(key)
        if entry is None:
            raise LookupError(f"no payment credited with key {key!r}")
        # The credits follow a /link (Accounts.settle): take them back from the wallet the
        # payer uses now, the first try's (pinned: a retry after another /link takes no more).
        pin = f"{REVERSE_ACCOUNT}{key}"
        now_at = await accounts.moved_to(entry.account) or entry.account
        account = await accounts.pinned(pin, now_at)
        for hop in range(MAX_HOPS):
            try:
                return await self._reverse_from(account, entry, key, reason)
            except InsufficientCredits:
                # Pinned by a try that took nothing (a replay of a debit that happened is
                # never refused), and the user /link-ed since: the money moved on, so the
                # reversal follows it. Re-pinned atomically, so racing retries agree.
                moved = await accounts.moved_to(account)
                if moved is None or hop == MAX_HOPS - 1:
                    raise
                if await self.store.delete_if(pin, account):
                    await self.store.add(pin, moved)
                account = await accounts.pinned(pin, moved)
        raise AssertionError("unreachable")  # the last hop returned or raised

    async def _reverse_from(self, account: str, entry: Entry, key: str, reason: str) -> Entry:
        """One try of `reverse` on `account` (as much as is available there)."""
        wallet = self._reversing().wallet
        balance = await wallet.balance(account)
        # Nothing available: ask for the whole payment anyway, so that a first reversal is
        # refused with InsufficientCredits.
        amount = min(entry.amount, balance.available)
        if amount <= 0:
            amount = entry.amount
        try:
            return await wallet.debit(
                account, amount, f"{REVERSAL}{key}", reason, ref=entry.id, meta={"payment": key}
            )
        except IdempotencyConflict as exc:
            # A repeated reversal (an operator retrying a refund) after the balance changed
            # asks for another amount under the same key: the first reversal stands.
            first = exc.first
            if isinstance(first, Entry) and first.kind == DEBIT:
                return first
            raise

    def _reversing(self) -> Accounts:
        if self._accounts is None:
            raise RuntimeError("this payment inbox was opened without accounts: cannot reverse")
        return self._accounts
