"""The conversation core: one object every front end talks to.

An adapter builds it with `await Core.create(settings)`, calls `start()`, hands it messages
(`handle`) and button presses (`press`), renders the events they yield, and registers a sink
per platform for events that arrive later on their own (an image finishing after a restart).
Payments from a platform (Telegram Stars, WeChat Pay) come in through `credit_payment`.
Nothing here knows a platform's wire format; nothing below it (billing) knows about chats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from billing.pricing import PriceList
from billing.tokens import get_encoding
from billing.wallet import open_wallet
from billing.wallet.base import (
    CREDIT,
    DEBIT,
    Entry,
    IdempotencyConflict,
    InsufficientCredits,
    Wallet,
)
from bot.accounts import MAX_HOPS, Accounts, account_for, ident_key, identity, remember_name
from bot.chat import ChatFlow, Opening
from bot.commands import Commands, parse_command
from bot.context import Request, Services
from bot.conversations import Conversations
from bot.events import Delivery, Event, Message, Notice, clean_text
from bot.i18n import language_of, t
from bot.imagine import ImageFlow
from bot.limits import InflightLimiter, new_token, undo_uncertain
from bot.runtime import freeze_startup_heap
from bot.settings import Settings
from bot.store import open_store
from bot.store.base import Op, Store, batch
from bot.sweeper import Sweeper

log = logging.getLogger(__name__)

Sink = Callable[[Delivery], Awaitable[None]]


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL ("sqlite+aiosqlite:///data/x.db" -> data/x.db), else None."""
    if not url.startswith("sqlite"):
        return None
    _, _, rest = url.partition(":///")
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


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
        self.images = ImageFlow(services, self._deliver)
        self.chat = ChatFlow(services)
        self.commands = Commands(services, self.images)
        self.sweeper = Sweeper(
            services.wallet,
            services.settings.sweep_interval_seconds,
            # Credits held on an account when it was linked away follow once released.
            [self.images.resume, services.accounts.settle_listed],
        )
        self._started = False
        self._names: dict[str, str] = {}  # display names already recorded by this process

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        wallet: Wallet | None = None,
        store: Store | None = None,
        prices: PriceList | None = None,
        openai: Any = None,
        mj: Any = None,
    ) -> Core:
        """Open whatever is not passed in, from the settings (and close it again in close())."""
        owned: list[Any] = []
        path = sqlite_path(settings.wallet_url)
        if path is not None and (wallet is None or store is None):
            path.parent.mkdir(parents=True, exist_ok=True)
        if wallet is None:
            wallet = await open_wallet(settings.wallet_url)
            owned.append(wallet)
        if store is None:
            store = await open_store(settings.wallet_url)
            owned.append(store)
        if prices is None:
            prices = PriceList.load(settings.prices_file)
        if openai is None:
            from bot.providers.openai import OpenAIClient

            openai = OpenAIClient(
                settings.openai_base_url,
                settings.openai_api_key,
                connect_timeout=settings.openai_connect_timeout,
                read_timeout=settings.openai_read_timeout,
                max_retries=settings.openai_max_retries,
            )
            owned.append(openai)
        if mj is None and settings.mj_base_url:
            from bot.providers.midjourney import MidjourneyClient

            mj = MidjourneyClient(
                settings.mj_base_url, settings.mj_api_secret, dialect=settings.mj_dialect
            )
            owned.append(mj)
        wallet, openai, mj = _instrumented(wallet, openai, mj)
        services = Services(
            settings=settings,
            wallet=wallet,
            store=store,
            prices=prices,
            openai=openai,
            mj=mj,
            accounts=Accounts(store, wallet),
            conversations=Conversations(store),
            limiter=InflightLimiter(store, settings.max_inflight_per_user),
        )
        return cls(services, owned=owned)

    @property
    def kv(self) -> Store:
        """The key-value store, for adapters' own non-money state."""
        return self.services.store

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sweeper and resume every unsettled Midjourney task; load the tokenizers
        of the priced models now rather than on a user's first message, then take what
        start-up made out of the garbage collector's reach (runtime.freeze_startup_heap)."""
        if self._started:
            return
        self._started = True
        resumed = await self.images.resume()
        if resumed:
            log.info("resumed %d Midjourney task(s)", resumed)
        self.sweeper.start()
        encodings = sorted({m.encoding for m in self.prices.chat_models() if m.encoding})
        for name in encodings:
            await asyncio.to_thread(get_encoding, name)
        freeze_startup_heap()

    async def close(self) -> None:
        """Stop background work and close what create() opened (unsettled tasks stay open)."""
        await self.sweeper.stop()
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
        # The mark's value is this delivery's own, so a first round trip that fails or is
        # cancelled (the store may have applied it) can take back its mark and no other: a
        # redelivery of a message never answered is then answered, not dropped.
        mark_key, mark = f"seen:{msg.platform}:{msg.message_id}", new_token()
        seen: Op = ("add", mark_key, mark, self.settings.dedupe_ttl_seconds)
        opening: Opening | None = None
        try:
            if text and not msg.images and parse_command(text) is None:
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
                shows_partial=getattr(msg, "shows_partial", True),
            )
            if msg.images:  # no model here reads pictures yet: say so rather than answer blind
                yield Notice(t("images_unsupported", lang))
                return
            if not req.text:
                yield Notice(t("empty_message", lang))
                return
            if opening is None:
                _count(msg.platform, "command")
                flow = self.commands.dispatch(req)
            else:
                _count(msg.platform, "chat")
                flow = self.chat.run(req, opening)
            async with _closing(flow) as events:
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
            f"seen:{platform}:press:{message_id}", "1", ttl=self.settings.dedupe_ttl_seconds
        ):
            return
        _count(platform, "press")
        req = Request(
            platform=platform,
            user_id=user_id,
            chat_id=chat_id,
            message_id=f"press:{message_id}",
            text=data,
            lang=language_of(language, self.settings.default_language),
            account=await self.services.accounts.resolve(platform, user_id),
        )
        async with _closing(self.images.press(req, data)) as events:
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
        """Send an event to a user outside any handle() call (e.g. a payment confirmation)."""
        await self._deliver(delivery)

    async def _deliver(self, delivery: Delivery) -> None:
        sink = self._sinks.get(delivery.platform)
        if sink is None:
            waiting = self._pending.setdefault(delivery.platform, [])
            if len(waiting) < 10_000:
                waiting.append(delivery)
            log.info("no sink for %s yet: event queued until one is set", delivery.platform)
            return
        await sink(delivery)

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

    async def _payment_entry(self, key: str) -> Entry | None:
        """The ledger entry that credited payment `key` (by its record, else by its wallet key)."""
        entry_id = await self.kv.get(f"pay:{key}")
        if entry_id:
            entry = await self.wallet.get_entry(entry_id)
            if entry is not None:
                return entry
        account = await self.kv.get(f"payacct:{key}")
        if account is None:
            return None
        before = None
        for _ in range(50):  # the payment's account's ledger, newest first
            page = await self.wallet.entries(account, limit=200, before=before)
            for entry in page:
                if entry.key == key and entry.kind == CREDIT:
                    await self.kv.set(f"pay:{key}", entry.id)
                    return entry
            if len(page) < 200:
                return None
            before = page[-1].created_at
        return None

    async def reverse_payment(self, key: str, *, reason: str) -> Entry:
        """Take a refunded payment's credits back (as much as is still available).

        Raises LookupError for an unknown payment key, InsufficientCredits when nothing is
        left to take back. The same key again returns the first reversal.
        """
        entry = await self._payment_entry(key)
        if entry is None:
            raise LookupError(f"no payment credited with key {key!r}")
        # The credits follow a /link (Accounts.settle): take them back from the wallet the
        # payer uses now, the first try's (pinned: a retry after another /link takes no more).
        accounts = self.services.accounts
        pin = f"reverseacct:{key}"
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
                if await self.kv.delete_if(pin, account):
                    await self.kv.add(pin, moved)
                account = await accounts.pinned(pin, moved)
        raise AssertionError("unreachable")  # the last hop returned or raised

    async def _reverse_from(self, account: str, entry: Entry, key: str, reason: str) -> Entry:
        """One try of `reverse_payment` on `account` (as much as is available there)."""
        balance = await self.wallet.balance(account)
        # Nothing available: ask for the whole payment anyway, so that a first reversal is
        # refused with InsufficientCredits.
        amount = min(entry.amount, balance.available)
        if amount <= 0:
            amount = entry.amount
        try:
            return await self.wallet.debit(
                account, amount, f"reverse:{key}", reason, ref=entry.id, meta={"payment": key}
            )
        except IdempotencyConflict as exc:
            # A repeated reversal (an operator retrying a refund) after the balance changed
            # asks for another amount under the same key: the first reversal stands.
            first = exc.first
            if isinstance(first, Entry) and first.kind == DEBIT:
                return first
            raise

    async def grant_trial(self, platform: str, user_id: str, amount_milli: int) -> bool:
        """Free credits once per platform user; True if granted by this call."""
        if amount_milli <= 0:
            return False
        flag = f"trial:{platform}:{user_id}"
        if await self.kv.get(flag):
            return False
        # Credit first (its wallet key makes a repeat harmless), then the flag: a crash in
        # between grants the trial on the next try instead of losing it.
        account = await self.account_of(platform, user_id)
        try:  # pinned, and following a /link that raced it (see Accounts.credit)
            await self.services.accounts.credit(
                account, amount_milli, flag, "trial credits", pin=f"creditacct:{flag}"
            )
        except IdempotencyConflict as exc:
            # Credited before the crash, then TRIAL_CREDITS changed: that credit is the trial.
            if not (isinstance(exc.first, Entry) and exc.first.kind == CREDIT):
                raise
        return await self.kv.add(flag, "1")

    async def text(self, key: str, language: str | None, **kw: object) -> str:
        """A user-facing text in the user's language (see bot/i18n.py)."""
        return t(key, language_of(language, self.settings.default_language), **kw)

    def is_admin(self, platform: str, user_id: str) -> bool:
        return f"{platform}:{user_id}" in self.settings.admin_ids


def _instrumented(wallet: Any, openai: Any, mj: Any) -> tuple[Any, Any, Any]:
    """Wrap the wallet and upstream clients with bot.metrics' counters, when it is there."""
    try:
        from bot import metrics
    except ImportError:
        return wallet, openai, mj
    return (
        metrics.instrument_wallet(wallet),
        metrics.instrument_openai(openai),
        metrics.instrument_mj(mj) if mj is not None else None,
    )


try:
    from bot.metrics import count_request as _count_request
except ImportError:  # metrics' dependencies are not installed
    _count_request = None


def _count(platform: str, kind: str) -> None:
    if _count_request is not None:
        _count_request(platform, kind)


class _closing:
    """`async with` that always closes an async generator (settling its holds)."""

    def __init__(self, gen: AsyncIterator[Event]) -> None:
        self.gen = gen

    async def __aenter__(self) -> AsyncIterator[Event]:
        return self.gen

    async def __aexit__(self, *exc: object) -> None:
        aclose = getattr(self.gen, "aclose", None)
        if aclose is not None:
            await aclose()
