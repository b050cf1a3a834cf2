"""The conversation core: one object every front end talks to.

`bot.assemble.assemble(settings)` builds it; an adapter calls `start()`, hands it messages
(`handle`) and button presses (`press`), renders the events they yield, and registers a sink
per platform for events that arrive later on their own (an image finishing after a restart).
Adapters see it as `bot.api.CoreAPI`. Payments from a platform (Telegram Stars, WeChat Pay)
come in through the payment inbox (bot/payments), which credits through `credit_payment`; every
periodic job runs on `scheduler`. Nothing here knows a platform's wire format; nothing below it
(billing) knows about chats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from billing.tokens import get_encoding
from billing.wallet.base import CREDIT, Entry, IdempotencyConflict
from bot.accounts import account_for, ident_key, identity, remember_name
from bot.api import Sink
from bot.chat import ChatFlow, Opening
from bot.commands import Commands, parse_command
from bot.context import Request, Services
from bot.events import Delivery, Event, Message, Notice, clean_text
from bot.health import Status
from bot.i18n import language_of, t
from bot.imagine import ImageFlow
from bot.limits import new_token, undo_uncertain
from bot.metrics import count_request
from bot.payments.inbox import PaymentInbox
from bot.payments.stars import StarsPayments
from bot.runtime import freeze_startup_heap
from bot.scheduler import SWEEPER_JOB, Scheduler, Sweeper
from bot.store.base import Op, Store, batch
from bot.store.keys import credit_account_key, press_seen_key, seen_key, trial_key

log = logging.getLogger(__name__)


class Core:
    """Commands, chat and images, billed through the wallet."""

    def __init__(self, services: Services, *, owned: list[Any]) -> None:
        self.services = services
        self.settings = services.settings
        self.wallet = services.wallet
        self.prices = services.prices
        self._owned = owned
        self._sinks: dict[str, Sink] = {}
        self._pending: dict[str, list[Delivery]] = {}  # for platforms whose sink is not set yet
        self._flushes: set[asyncio.Task[None]] = set()
        self.images = ImageFlow(services, self.deliver)
        self.chat = ChatFlow(services)
        self.commands = Commands(services, self.images)
        self.sweeper = Sweeper(
            services.wallet,
            # Credits held on an account when it was linked away follow once released.
            [self.images.resume, services.accounts.settle_listed],
        )
        # Every periodic job runs here: the sweeper, and the payment providers' retries that
        # their front ends add (Stars retry, WeChat Pay reconciliation).
        self.scheduler = Scheduler()
        self.scheduler.every(SWEEPER_JOB, self.settings.sweep_interval_seconds, self.sweeper.tick)
        # Payments credit through `credit_payment` looked up at each call, so whatever wraps it
        # on this core sees every payment.
        self.inbox = PaymentInbox(services.store, self._credit, accounts=services.accounts)
        self.stars = StarsPayments(self.inbox)
        self._started = False
        self._names: dict[str, str] = {}  # display names already recorded by this process

    @property
    def kv(self) -> Store:
        """The key-value store, for adapters' own non-money state."""
        return self.services.store

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler and resume every unsettled Midjourney task; load the tokenizers
        of the priced models now rather than on a user's first message, then take what
        start-up made out of the garbage collector's reach (runtime.freeze_startup_heap)."""
        if self._started:
            return
        self._started = True
        resumed = await self.images.resume()
        if resumed:
            log.info("resumed %d Midjourney task(s)", resumed)
        self.scheduler.start()
        encodings = sorted({m.encoding for m in self.prices.chat_models() if m.encoding})
        for name in encodings:
            await asyncio.to_thread(get_encoding, name)
        freeze_startup_heap()

    async def close(self) -> None:
        """Stop background work and close what assemble() opened (unsettled tasks stay open)."""
        await self.scheduler.stop()
        await self.images.close()
        for task in list(self._flushes):
            task.cancel()
        for thing in reversed(self._owned):
            try:
                await thing.close()
            except Exception:
                log.exception("closing %r failed", type(thing).__name__)
        self._owned.clear()

    # --- messages ----------------------------------------------------------------------------

    async def handle(
        self, msg: Message, *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[Event]:
        """Answer one message. A redelivered message id yields nothing and charges nothing.

        A message that carries a picture is answered with a notice and charges nothing: the
        picture is not sent to the model, and its caption alone would be answered blind.

        The message's dedupe mark goes in the same store round trip as the read of who pays;
        for a chat message, also as the in-flight lease and the reads of the model and the
        history (ChatFlow.open).
        """
        text = msg.text.strip()
        command = parse_command(text)  # the one parse of the text: a command, else a chat
        # The mark's value is this delivery's own, so a first round trip that fails or is
        # cancelled (the store may have applied it) can take back its mark and no other: a
        # redelivery of a message never answered is then answered, not dropped.
        mark_key, mark = seen_key(msg.platform, msg.message_id), new_token()
        seen: Op = ("add", mark_key, mark, self.settings.dedupe_ttl_seconds)
        opening: Opening | None = None
        try:
            if text and not msg.images and command is None:
                opening = await self.chat.open(msg.platform, msg.user_id, msg.chat_id, seen)
                fresh = opening is not None
            else:
                ident = identity(msg.platform, msg.user_id)
                fresh, linked = await batch(self.kv, [seen, ("get", ident_key(ident))])
        except BaseException:
            await undo_uncertain(self.kv, [("delete_if", mark_key, mark)])
            raise
        if not fresh:
            log.debug("dropped redelivered message %s:%s", msg.platform, msg.message_id)
            return
        # No await between here and the try: its finally frees the opening's lease.
        account = opening.account if opening is not None else account_for(ident, linked)
        try:
            lang = language_of(msg.language, self.settings.default_language)
            await self._remember_name(msg)
            req = Request(
                platform=msg.platform,
                user_id=msg.user_id,
                chat_id=msg.chat_id,
                message_id=msg.message_id,
                text=text,
                lang=lang,
                account=account,
                stop=stop,
                shows_partial=msg.shows_partial,
            )
            if msg.images:  # no model here reads pictures yet: say so rather than answer blind
                yield Notice(t("images_unsupported", lang))
                return
            if not req.text:
                yield Notice(t("empty_message", lang))
                return
            if opening is not None:
                count_request(msg.platform, "chat")
                flow = self.chat.run(req, opening)
            else:
                assert command is not None  # with text and no pictures, not a chat: a command
                count_request(msg.platform, "command")
                flow = self.commands.dispatch(req, command)
            async with contextlib.aclosing(flow) as events:
                async for event in events:
                    yield event
        finally:
            if opening is not None:  # the lease, should the flow never have started
                await opening.close()

    async def _remember_name(self, msg: Message) -> None:
        """Record the sender's display name for `creditbot admin find` (once per change)."""
        name = (msg.user_name or "").strip()
        ident = f"{msg.platform}:{msg.user_id}"
        if not name or self._names.get(ident) == name:
            return
        try:
            await remember_name(self.kv, msg.platform, msg.user_id, name)
        except Exception:  # a name is a convenience: never fail a message for it
            log.warning("could not record a display name", exc_info=True)
            return
        if len(self._names) >= 100_000:
            self._names.clear()
        self._names[ident] = name

    async def press(
        self,
        platform: str,
        user_id: str,
        chat_id: str,
        data: str,
        *,
        message_id: str,
        language: str | None = None,
    ) -> AsyncIterator[Event]:
        """A button press (an Action.data). `message_id` is the press's own unique id."""
        data = clean_text(data)  # like a Message's text: encodable before it goes anywhere
        if not await self.kv.add(
            press_seen_key(platform, message_id), "1", ttl=self.settings.dedupe_ttl_seconds
        ):
            return
        count_request(platform, "press")
        req = Request(
            platform=platform,
            user_id=user_id,
            chat_id=chat_id,
            message_id=f"press:{message_id}",
            text=data,
            lang=language_of(language, self.settings.default_language),
            account=await self.services.accounts.resolve(platform, user_id),
        )
        async with contextlib.aclosing(self.images.press(req, data)) as events:
            async for event in events:
                yield event

    def set_sink(self, platform: str, sink: Sink) -> None:
        """Where events for `platform` go when no handle() call is waiting for them.

        Events that arrived before the sink was set (an image that finished while the bot was
        down, settled by start()) are handed to it now.
        """
        self._sinks[platform] = sink
        waiting = self._pending.pop(platform, [])
        if waiting:
            task = asyncio.get_running_loop().create_task(self._flush(sink, waiting))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, sink: Sink, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            try:
                await sink(delivery)
            except Exception:
                log.exception("delivering a queued event to %s failed", delivery.platform)

    async def deliver(self, delivery: Delivery) -> None:
        """Send an event to a user outside any handle() call (e.g. a payment confirmation);
        kept until the platform's sink is set."""
        sink = self._sinks.get(delivery.platform)
        if sink is None:
            waiting = self._pending.setdefault(delivery.platform, [])
            if len(waiting) < 10_000:
                waiting.append(delivery)
            log.info("no sink for %s yet: event queued until one is set", delivery.platform)
            return
        await sink(delivery)

    def upstream_statuses(self) -> dict[str, Status]:
        """How each upstream client's last request went, for /healthz (clients without a
        status, such as test stand-ins, are left out)."""
        clients = (("upstream", self.services.openai), ("midjourney", self.services.mj))
        found = ((name, getattr(client, "status", None)) for name, client in clients)
        return {name: status for name, status in found if isinstance(status, Status)}

    def mj_notify(self, task_id: str) -> bool:
        """midjourney-proxy's notifyHook: re-fetch the task now (never settles by itself)."""
        return self.images.poke(task_id)

    # --- money from platforms ----------------------------------------------------------------

    async def account_of(self, platform: str, user_id: str) -> str:
        """The wallet account a platform user pays from (after /link)."""
        return await self.services.accounts.resolve(platform, user_id)

    async def credit_payment(
        self,
        platform: str,
        user_id: str,
        amount_milli: int,
        *,
        key: str,
        reason: str,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        """Credit a confirmed payment; the same `key` again credits nothing more.

        See `Accounts.credit_payment` (which `creditbot admin order` uses too).
        """
        return await self.services.accounts.credit_payment(
            platform, user_id, amount_milli, key=key, reason=reason, meta=meta
        )

    async def _credit(self, *args: Any, **kwargs: Any) -> Entry:
        """The inbox's way to `credit_payment`, looked up at each call (see __init__)."""
        return await self.credit_payment(*args, **kwargs)

    async def reverse_payment(self, key: str, *, reason: str) -> Entry:
        """Take a refunded payment's credits back (as much as is still available).

        Raises LookupError for an unknown payment key, InsufficientCredits when nothing is
        left to take back. The same key again returns the first reversal.
        """
        return await self.inbox.reverse(key, reason=reason)

    async def stars_paid(
        self, charge_id: str, user_id: str, credits_milli: int, stars: int, *, receipt_ttl: float
    ) -> bool:
        """A Telegram Stars payment arrived: credit it once (see bot/payments/stars.py); True
        if the payer's receipt is still to be sent (once per charge within `receipt_ttl`)."""
        return await self.stars.paid(
            charge_id, user_id, credits_milli, stars, receipt_ttl=receipt_ttl
        )

    async def retry_stars(self) -> int:
        """Credit the Stars payments whose crediting failed earlier; returns how many."""
        return await self.stars.retry_pending()

    async def reverse_stars(self, charge_id: str, *, reason: str) -> Entry:
        """A refunded Stars charge: take its credits back (see `reverse_payment`)."""
        return await self.stars.reverse(charge_id, reason=reason)

    async def grant_trial(self, platform: str, user_id: str, amount_milli: int) -> bool:
        """Free credits once per platform user; True if granted by this call."""
        if amount_milli <= 0:
            return False
        flag = trial_key(platform, user_id)
        if await self.kv.get(flag):
            return False
        # Credit first (its wallet key makes a repeat harmless), then the flag: a crash in
        # between grants the trial on the next try instead of losing it.
        account = await self.account_of(platform, user_id)
        try:  # pinned, and following a /link that raced it (see Accounts.credit)
            await self.services.accounts.credit(
                account, amount_milli, flag, "trial credits", pin=credit_account_key(flag)
            )
        except IdempotencyConflict as exc:
            # Credited before the crash, then TRIAL_CREDITS changed: that credit is the trial.
            if not (isinstance(exc.first, Entry) and exc.first.kind == CREDIT):
                raise
        return await self.kv.add(flag, "1")
