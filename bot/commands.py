"""Commands, the same on every platform, answered in the user's language.

The core parses a message's text once (`parse_command`) and hands the `Command` to
`Commands.dispatch`, which looks its name up in one table. Every handler is an async generator
of events: most yield one FinalText (a command's reply) or Notice (a refusal or an error);
`/imagine` yields progress and the image as they come. Admin commands check
`settings.admin_ids` ("platform:user_id") and refuse everyone else politely.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from billing.money import format_cny, format_credits, parse_credits
from billing.pricing import IMAGE_ACTIONS, UnknownModel
from billing.wallet.base import CAPTURE, MAX_TOTAL, BalanceLimitExceeded, Entry
from bot.accounts import LinkError
from bot.chat import chosen_model, price_text
from bot.codes import CodeError, redeem_code
from bot.context import Request, Services
from bot.events import Event, FinalText, Notice
from bot.i18n import t
from bot.imagine import ImageFlow
from bot.store.keys import credit_account_key, refund_key

log = logging.getLogger(__name__)

USAGE_LINES = 10
USAGE_MAX_LINES = 50

Events = AsyncGenerator[Event, None]
Handler = Callable[[Request, str], Events]


class Command(NamedTuple):
    """A parsed command: `/model@MyBot gpt-4` is Command("model", "gpt-4")."""

    name: str
    args: str


def parse_command(text: str) -> Command | None:
    """ "/model@MyBot gpt-4" -> Command("model", "gpt-4"); None if the text is not a command."""
    text = text.strip()
    if not text.startswith("/") or len(text) < 2:
        return None
    head, _, rest = text[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    if not name:
        return None
    return Command(name, rest.strip())


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Commands:
    """Routes `/name args` to its handler."""

    def __init__(self, services: Services, images: ImageFlow) -> None:
        self.s = services
        self.images = images
        self.handlers: dict[str, Handler] = {
            "start": self.start,
            "help": self.help,
            "balance": self.balance,
            "topup": self.topup,
            "new": self.new,
            "model": self.model,
            "price": self.price,
            "prices": self.price,
            "usage": self.usage,
            "link": self.link,
            "imagine": images.imagine,
            "grant": self.grant,
            "refund": self.refund,
        }

    async def dispatch(self, req: Request, command: Command) -> Events:
        """The events answering `command` (parsed by the caller from `req.text`)."""
        handler = self.handlers.get(command.name)
        if handler is None:
            yield Notice(t("unknown_command", req.lang))
            return
        async with contextlib.aclosing(handler(req, command.args)) as events:
            async for event in events:
                yield event

    # --- everyone ----------------------------------------------------------------------------

    async def start(self, req: Request, args: str) -> Events:
        balance = await self.s.wallet.balance(req.account)
        greeting = t("start_greeting", req.lang, available=format_credits(balance.available))
        yield FinalText(greeting + "\n\n" + await self._help_text(req))

    async def help(self, req: Request, args: str) -> Events:
        yield FinalText(await self._help_text(req))

    async def _help_text(self, req: Request) -> str:
        model, _ = await chosen_model(self.s, req.account)
        try:
            image = format_credits(self.s.prices.image_cost("imagine"))
        except UnknownModel:
            image = "-"
        return t("help", req.lang, model=model, image=image)

    async def balance(self, req: Request, args: str) -> Events:
        balance = await self.s.wallet.balance(req.account)
        today = await self._spent_today(req.account)
        yield FinalText(
            t(
                "balance",
                req.lang,
                available=format_credits(balance.available),
                cny=format_cny(max(balance.available, 0)),
                held=format_credits(balance.held),
                today=format_credits(today),
            )
        )

    async def _spent_today(self, account: str) -> int:
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        spent = 0
        before: datetime | None = None
        while True:
            page = await self.s.wallet.entries(account, limit=200, before=before)
            for entry in page:
                if as_utc(entry.created_at) < start:
                    return spent
                if entry.kind == CAPTURE:
                    spent -= entry.amount
            if len(page) < 200:
                return spent
            before = page[-1].created_at

    async def topup(self, req: Request, args: str) -> Events:
        if not args:
            yield FinalText(self.s.settings.topup_text or t("topup_default", req.lang))
            return
        try:
            amount = await redeem_code(
                self.s.wallet, self.s.store, req.account, args, user_key=req.ident
            )
        except CodeError as exc:
            yield Notice(t(f"code_{exc.kind}", req.lang), kind="error")
            return
        except BalanceLimitExceeded:
            limit = format_credits(MAX_TOTAL)
            yield Notice(t("topup_limit", req.lang, limit=limit), kind="error")
            return
        balance = await self.s.wallet.balance(req.account)
        yield FinalText(
            t(
                "topup_ok",
                req.lang,
                credits=format_credits(amount),
                available=format_credits(balance.available),
            )
        )

    async def new(self, req: Request, args: str) -> Events:
        await self.s.conversations.reset(req.account, req.platform, req.chat_id)
        yield FinalText(t("new_ok", req.lang))

    async def model(self, req: Request, args: str) -> Events:
        prices = self.s.prices
        if args:
            name = args.split()[0]
            try:
                price = prices.get(name)
            except UnknownModel:
                yield Notice(t("model_unknown", req.lang, model=name), kind="error")
                return
            if price.kind != "chat":
                yield Notice(t("model_not_chat", req.lang, model=name), kind="error")
                return
            await self.s.conversations.set_model(req.account, name.strip().lower())
            yield FinalText(
                t(
                    "model_switched",
                    req.lang,
                    model=name.strip().lower(),
                    input=price_text(price.input),
                    output=price_text(price.output),
                )
            )
            return
        current, current_price = await chosen_model(self.s, req.account)
        lines = [t("model_header", req.lang)]
        for price in prices.chat_models():
            lines.append(
                t(
                    "model_line",
                    req.lang,
                    mark="•" if price.name == current_price.name else "-",
                    name=price.name,
                    input=price_text(price.input),
                    output=price_text(price.output),
                    context=price.context_window,
                )
            )
        lines.append(t("model_footer", req.lang, model=current))
        yield FinalText("\n".join(lines))

    async def price(self, req: Request, args: str) -> Events:
        prices = self.s.prices
        lines = [t("price_header", req.lang)]
        for price in prices.chat_models():
            lines.append(
                t(
                    "price_chat_line",
                    req.lang,
                    name=price.name,
                    input=price_text(price.input),
                    output=price_text(price.output),
                )
            )
        images = prices.image_models()
        if images:
            lines.append(t("price_image_header", req.lang))
            for action in IMAGE_ACTIONS:
                if action in images[0].actions:
                    lines.append(
                        t(
                            "price_image_line",
                            req.lang,
                            action=t(f"action_{action}", req.lang),
                            credits=format_credits(images[0].actions[action]),
                        )
                    )
        lines.append(t("price_footer", req.lang))
        yield FinalText("\n".join(lines))

    async def usage(self, req: Request, args: str) -> Events:
        count = USAGE_LINES
        if args.split() and args.split()[0].isdigit():
            count = max(1, min(int(args.split()[0]), USAGE_MAX_LINES))
        entries = await self.s.wallet.entries(req.account, limit=count)
        if not entries:
            yield FinalText(t("usage_empty", req.lang))
            return
        lines = [t("usage_header", req.lang, count=len(entries))]
        lines.extend(usage_line(entry, req.lang) for entry in entries)
        yield FinalText("\n".join(lines))

    async def link(self, req: Request, args: str) -> Events:
        accounts = self.s.accounts
        if not args:
            code = await accounts.new_link_code(req.account)
            yield FinalText(t("link_code", req.lang, code=code, minutes=10))
            return
        try:
            account, moved = await accounts.link(req.platform, req.user_id, args.split()[0])
        except LinkError as exc:
            yield Notice(t(f"link_{exc.kind}", req.lang), kind="error")
            return
        available = format_credits((await self.s.wallet.balance(account)).available)
        if moved:
            yield FinalText(
                t("link_moved", req.lang, credits=format_credits(moved), available=available)
            )
            return
        yield FinalText(t("link_ok", req.lang, available=available))

    # --- admins ------------------------------------------------------------------------------

    def is_admin(self, req: Request) -> bool:
        return req.ident in self.s.settings.admin_ids

    async def grant(self, req: Request, args: str) -> Events:
        if not self.is_admin(req):
            yield Notice(t("admin_only", req.lang), kind="error")
            return
        parts = args.split()
        if len(parts) != 2:
            yield Notice(t("grant_usage", req.lang), kind="error")
            return
        try:
            amount = parse_credits(parts[1])
        except ValueError:
            amount = 0
        if amount <= 0:
            yield Notice(t("bad_amount", req.lang, value=parts[1]), kind="error")
            return
        account = await self.s.accounts.resolve_name(parts[0])
        key = f"grant:{req.platform}:{req.message_id}"
        # Through Accounts: a redelivered grant credits the first account (pinned), and the
        # credits follow the user if a /link moved them meanwhile.
        try:
            entry = await self.s.accounts.credit(
                account,
                amount,
                key,
                f"grant by {req.ident}",
                meta={"admin": req.ident},
                pin=credit_account_key(key),
            )
        except BalanceLimitExceeded as exc:
            yield _over_limit(exc, req.lang)
            return
        account = await self.s.accounts.moved_to(entry.account) or entry.account
        log.info("admin grant of %d millicredits (entry %s)", amount, entry.id)
        balance = await self.s.wallet.balance(account)
        yield FinalText(
            t(
                "grant_ok",
                req.lang,
                credits=format_credits(amount),
                account=account,
                entry=entry.id,
                available=format_credits(balance.available),
            )
        )

    async def refund(self, req: Request, args: str) -> Events:
        if not self.is_admin(req):
            yield Notice(t("admin_only", req.lang), kind="error")
            return
        parts = args.split()
        if len(parts) != 1:
            yield Notice(t("refund_usage", req.lang), kind="error")
            return
        entry_id = parts[0].lstrip("#")
        entry = await self.s.wallet.get_entry(entry_id)
        if entry is None:
            yield Notice(t("refund_not_found", req.lang, entry=entry_id), kind="error")
            return
        if entry.kind != CAPTURE:
            # Only a charge can be given back: refunding a /link move or a payment reversal
            # would create credits that were never paid for.
            yield Notice(t("refund_not_charge", req.lang, entry=entry.id), kind="error")
            return
        marker = refund_key(entry.id)
        done = await self.s.store.get(marker)
        if done:
            yield Notice(t("refund_already", req.lang, entry=entry.id, refund=done))
            return
        # To the charged account; through Accounts, it follows the user if they /link'ed since.
        try:
            refund = await self.s.accounts.credit(
                entry.account,
                -entry.amount,
                marker,
                f"compensation for entry {entry.id}",
                ref=entry.id,
                meta={"admin": req.ident},
            )
        except BalanceLimitExceeded as exc:
            yield _over_limit(exc, req.lang)
            return
        await self.s.store.set(marker, refund.id)
        yield FinalText(
            t(
                "refund_ok",
                req.lang,
                credits=format_credits(refund.amount),
                account=entry.account,
                entry=entry.id,
                refund=refund.id,
            )
        )


def _over_limit(exc: BalanceLimitExceeded, lang: str) -> Notice:
    """An admin's credit that the account cannot hold: refused, and said so."""
    return Notice(
        t(
            "balance_limit",
            lang,
            account=exc.account,
            credits=format_credits(exc.amount),
            limit=format_credits(MAX_TOTAL),
        ),
        kind="error",
    )


def usage_line(entry: Entry, lang: str) -> str:
    """One ledger entry with everything needed to recompute its charge."""
    meta: dict[str, Any] = entry.meta or {}
    when = as_utc(entry.created_at).strftime("%Y-%m-%d %H:%M:%S")
    credits = format_credits(-entry.amount if entry.kind == CAPTURE else entry.amount)
    if entry.kind == CAPTURE and meta.get("model") == "midjourney":
        return t(
            "usage_image",
            lang,
            time=when,
            id=entry.id,
            action=str(meta.get("action", "")).lower(),
            task=meta.get("task_id", ""),
            credits=credits,
        )
    if entry.kind == CAPTURE and "prompt_tokens" in meta:
        rule = str(meta.get("rule", "usage"))
        values = {
            "time": when,
            "id": entry.id,
            "model": meta.get("model", ""),
            "prompt": meta.get("prompt_tokens", 0),
            "completion": meta.get("completion_tokens", 0),
            "price_in": meta.get("price_in", ""),
            "price_out": meta.get("price_out", ""),
            "credits": credits,
            "rule": t(f"rule_{rule}", lang) if rule in ("usage", "cut", "stopped") else rule,
        }
        if meta.get("cached_tokens"):
            return t(
                "usage_chat_cached",
                lang,
                cached=meta["cached_tokens"],
                price_cached=meta.get("price_cached", ""),
                **values,
            )
        return t("usage_chat", lang, **values)
    sign = "+" if entry.amount > 0 else ""
    return t(
        "usage_other",
        lang,
        time=when,
        id=entry.id,
        reason=entry.reason or entry.kind,
        credits=sign + format_credits(entry.amount),
    )
