"""The billed chat flow: trim, count, hold, stream, capture the real cost.

Billing rules (each has a test, and the README states them):
- the upstream's usage chunk is the truth: capture cost(usage), never more than was held;
- a stream cut before its usage: the prompt (our exact count) + the tokens of the text received;
- the user stops the generation: the prompt + the tokens of the text generated up to the stop;
- an upstream error before any output (or a stop before any): void the hold, charge nothing;
- the same platform message twice: the hold key is derived from it, so it cannot hold twice.
Every capture records model, token counts, unit prices and the rule, so /usage can show a
user enough to recompute each charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from billing.money import format_credits, format_decimal
from billing.pricing import ModelPrice, UnknownModel
from billing.tokens import count_text
from billing.wallet.base import HELD, Hold, HoldNotActive, IdempotencyConflict, InsufficientCredits
from bot.accounts import account_for, identity
from bot.context import Request, Services
from bot.conversations import Prompt, TooLong, fit, parse_history
from bot.events import Event, FinalText, Notice, TextDelta
from bot.holds import hold_or_void, run_shielded
from bot.i18n import t
from bot.limits import Lease, batch_taking
from bot.providers.errors import (
    ContextLengthExceeded,
    QuotaExceeded,
    RateLimited,
    StreamCut,
    UpstreamError,
)
from bot.providers.openai import Usage
from bot.store.base import Op
from bot.store.keys import ident_key

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)
def price_text(value: Any) -> str:
    """A unit price (credits per 1K tokens) as an exact decimal for the ledger (remembered:
    every capture records its model's prices)."""
    try:
        return format_decimal(value)
    except ValueError:
        return str(value)


@dataclass(slots=True)
class _Outcome:
    """What happened upstream, enough to decide the charge."""

    parts: list[str] = field(default_factory=list)
    usage: Usage | None = None
    cut: str | None = None  # received text of a cut stream
    error: str | None = None  # i18n key of the error told to the user
    stopped: bool = False
    settled: bool = False
    charged: int = 0
    prompt: Prompt | None = None  # the prompt actually sent, after a context-length retry

    @property
    def text(self) -> str:
        return self.cut if self.cut is not None and not self.parts else "".join(self.parts)


async def chosen_model(services: Services, account: str) -> tuple[str, ModelPrice]:
    """The account's model (falling back to the default when its price was withdrawn)."""
    return price_of(services, await services.conversations.model(account))


def price_of(services: Services, chosen: str | None) -> tuple[str, ModelPrice]:
    """The chosen model's price, or the default model's when none is chosen or it was withdrawn."""
    name = chosen or services.settings.default_model
    try:
        return name, services.prices.get(name)
    except UnknownModel:
        name = services.settings.default_model
        return name, services.prices.get(name)


@dataclass(slots=True)
class Opening:
    """What a chat message's first store round trip found (see ChatFlow.open)."""

    account: str  # the account that pays
    lease: Lease | None  # its in-flight slot; None: another request holds every slot
    chosen: str | None  # its chosen model
    raw: str | None  # this chat's stored history

    async def close(self) -> None:
        """Free the lease if no flow took it over (a flow frees it itself when it ends)."""
        if self.lease is not None:
            await self.lease.release()


class ChatFlow:
    """One chat request, from the user's text to a settled hold."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def open(self, platform: str, user_id: str, chat_id: str, dedupe: Op) -> Opening | None:
        """A chat message's first round trip: `dedupe` (an `add` of the message's mark), the
        identity's link, and, betting that the identity pays from its own account (as every
        identity does until /link), that account's lease, chosen model and history.

        None when the mark was there already (a redelivery; a lease taken is freed). A linked
        identity loses the bet: the lease is freed and the linked account's taken and read in
        one more round trip. The Opening's lease must reach `run` or `close()`. A round trip
        that fails or is cancelled frees the slots it may have taken (`batch_taking`).
        """
        s = self.s
        ident = identity(platform, user_id)
        claim, lease = s.limiter.claim(ident)
        keys = [ident_key(ident), *s.conversations.keys(ident, platform, chat_id)]
        fresh, won, (linked, chosen, raw) = await batch_taking(
            s.store, [dedupe, claim, ("get_many", keys)], lease
        )
        if not fresh:  # a redelivery: answered already, or being answered
            if won:
                await lease.release()
            return None
        account = account_for(ident, linked)
        if account == ident:
            taken = lease if won else await s.limiter.acquire_more(account)
            return Opening(account, taken, chosen, raw)
        # Linked: free the slot taken on the identity's own account as the right one is taken.
        taken, (chosen, raw) = await s.limiter.acquire_and_read(
            account,
            s.conversations.keys(account, platform, chat_id),
            giving_back=lease if won else None,
        )
        return Opening(account, taken, chosen, raw)

    async def run(self, req: Request, opening: Opening | None = None) -> AsyncIterator[Event]:
        """Answer `req`; `opening`: its first round trip made already (see `open`), whose lease
        this flow takes over."""
        # One round trip takes the lease and reads the model and the history (`open`); one
        # more saves the history and frees the lease (see Lease.release).
        if opening is None:
            conv = self.s.conversations
            lease, (chosen, raw) = await self.s.limiter.acquire_and_read(
                req.account, conv.keys(req.account, req.platform, req.chat_id)
            )
        else:
            lease, chosen, raw = opening.lease, opening.chosen, opening.raw
        if lease is None:
            yield Notice(t("wait", req.lang), kind="wait")
            return
        save: list[Op] = []
        try:
            run = self._run(req, lease, chosen, parse_history(raw), save)
            async with contextlib.aclosing(run) as events:
                async for event in events:
                    yield event
        finally:
            await lease.release(*save)

    async def _run(
        self, req: Request, lease: Lease, chosen: str | None, history: list[dict], save: list[Op]
    ) -> AsyncIterator[Event]:
        s = self.s
        settings = s.settings
        model, price = price_of(s, chosen)
        context = price.context_window or 4096
        reserve = min(settings.max_reply_tokens, context // 2)
        try:
            prompt = fit(price, settings.system_prompt, history, req.text, context - reserve)
        except TooLong as exc:
            yield Notice(
                t("too_long", req.lang, model=model, tokens=exc.tokens, limit=exc.limit),
                kind="error",
            )
            return

        try:
            hold, max_reply, available = await self._hold(req, price, prompt, context)
        except IdempotencyConflict:
            # The message's hold key already holds another amount: an earlier delivery held
            # before the balance changed. That delivery owns the answer (its hold is settled
            # there, or voided by the sweeper); answering again would charge twice.
            log.info(
                "chat message %s:%s already handled; not answering twice",
                req.platform,
                req.message_id,
            )
            return
        if hold is None:
            yield self._insufficient(req, model, price, prompt, available)
            return
        if hold.status != HELD:
            log.info(
                "chat hold %s replayed (already %s); not answering twice", hold.id, hold.status
            )
            return

        out = _Outcome()
        try:
            stream = self._stream(req, lease, model, price, prompt, max_reply, out)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    yield event
            await self._settle(req, hold.id, hold.amount, model, price, prompt, out)
            if out.parts or out.cut is not None:  # saved as the lease is freed, in one trip
                save.append(
                    s.conversations.saving(
                        req.account,
                        req.platform,
                        req.chat_id,
                        req.text,
                        out.text,
                        history,
                        price=price,
                        prompt=out.prompt or prompt,
                    )
                )
        finally:
            if not out.settled:  # the consumer went away (or a bug): settle what we know
                await self._settle_abandoned(req, hold, model, price, prompt, out)

        if out.error and not out.parts and out.cut is None:
            yield Notice(t(out.error, req.lang), kind="error")
            return
        if out.cut is not None:
            yield Notice(
                t("stream_cut", req.lang, credits=format_credits(out.charged)), kind="info"
            )
        yield FinalText(out.text, stopped=out.stopped)

    async def _settle_abandoned(
        self, req: Request, hold: Hold, model: str, price: ModelPrice, prompt: Prompt, out: _Outcome
    ) -> None:
        """Settle a reply whose consumer went away before it ended.

        The user's own stop charges what was generated. Otherwise the adapter went away
        (cancelled, shut down): what was streamed is charged only where the platform showed
        it as it came (Telegram, console); where it shows only whole replies (WeChat) the
        user saw nothing, so the hold is voided. Shielded: a second cancellation cannot leave
        the hold live.
        """
        user_stopped = req.stop is not None and req.stop.is_set()
        if not user_stopped and not req.shows_partial:
            out.parts.clear()
            out.cut = None
            out.usage = None
        out.stopped = True
        try:
            await run_shielded(self._settle(req, hold.id, hold.amount, model, price, prompt, out))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("settling an abandoned chat hold %s failed", hold.id)

    async def _hold(
        self, req: Request, price: ModelPrice, prompt: Prompt, context: int
    ) -> tuple[Hold | None, int, int]:
        """Hold the prompt + the longest reply the balance pays for: (hold, max reply, available).

        The first try asks for the longest reply without reading the balance (the common case
        costs one wallet call); a refusal says what is available, and the reply is capped to it.
        A refused hold leaves no trace under its key, so the capped try reuses the key and a
        replayed message still cannot hold twice.
        """
        settings = self.s.settings
        longest = min(settings.max_reply_tokens, context - prompt.tokens)
        max_reply = longest
        available = 0
        for _ in range(3):
            if max_reply < settings.min_reply_tokens:
                break
            try:
                hold = await hold_or_void(
                    self.s.wallet,
                    req.account,
                    price.chat_cost(prompt.tokens, max_reply),
                    f"chat:{req.platform}:{req.message_id}",
                    ttl=settings.hold_ttl_seconds,
                    reason="cancelled before the reply",
                )
                return hold, max_reply, available
            except InsufficientCredits as exc:
                available = max(exc.available, 0)
                max_reply = min(longest, price.max_completion_tokens(available, prompt.tokens))
        if max_reply == longest:  # never asked the wallet (MAX_REPLY_TOKENS < MIN_REPLY_TOKENS)
            available = (await self.s.wallet.balance(req.account)).available
        return None, 0, available

    async def _stream(
        self,
        req: Request,
        lease: Lease,
        model: str,
        price: ModelPrice,
        prompt: Prompt,
        max_reply: int,
        out: _Outcome,
    ) -> AsyncIterator[Event]:
        """Stream the reply into `out`, trimming and retrying once on a context error."""
        retried = False
        while True:
            try:
                stream = self.s.openai.stream_chat(model, prompt.messages, max_reply, stop=req.stop)
                async with contextlib.aclosing(stream) as items:
                    async for item in items:
                        if isinstance(item, Usage):
                            out.usage = item
                            continue
                        if item.text:
                            out.parts.append(item.text)
                            yield TextDelta(item.text)
                            await lease.renew()
                if req.stop is not None and req.stop.is_set() and out.usage is None:
                    out.stopped = True
                return
            except ContextLengthExceeded:
                if retried or out.parts or prompt.history_used == 0:
                    log.warning("upstream context length exceeded after trimming")
                    out.error = "upstream_error"
                    return
                retried = True
                prompt = fit(
                    price,
                    self.s.settings.system_prompt,
                    prompt.messages[1:-1]
                    if self.s.settings.system_prompt
                    else prompt.messages[:-1],
                    req.text,
                    prompt.tokens,
                    max_history=prompt.history_used // 2,
                )
                out.prompt = prompt
            except StreamCut as exc:
                received = exc.received_text or "".join(out.parts)
                if received:
                    out.cut = received
                else:  # nothing reached the user: the same as an error before output
                    out.error = "upstream_error"
                return
            except QuotaExceeded:
                log.error("OpenAI quota exhausted (insufficient_quota): top up the API account")
                out.error = "upstream_unavailable"
                return
            except RateLimited:
                log.warning("OpenAI rate limit outlasted the retries")
                out.error = "upstream_busy"
                return
            except UpstreamError as exc:
                log.warning("OpenAI request failed: %s (%s)", exc.kind, exc.status or "-")
                if out.parts:
                    out.cut = "".join(out.parts)
                else:
                    out.error = "upstream_error"
                return

    async def _settle(
        self,
        req: Request,
        hold_id: str,
        held: int,
        model: str,
        price: ModelPrice,
        prompt: Prompt,
        out: _Outcome,
    ) -> None:
        """Capture by the rule that applies, or void; exactly once per request."""
        if out.settled:
            return
        prompt = out.prompt or prompt
        wallet = self.s.wallet
        cached = 0
        if out.usage is not None:
            rule = "usage"
            prompt_tokens = out.usage.prompt_tokens
            completion = out.usage.completion_tokens
            cached = min(out.usage.cached_tokens, prompt_tokens)
            if prompt_tokens != prompt.tokens:
                log.info(
                    "upstream counted %d prompt tokens, we counted %d", prompt_tokens, prompt.tokens
                )
        elif out.cut is not None or out.parts:
            text = out.text
            if out.stopped and out.cut is None:
                rule = "stopped"
            else:  # cut, or ended without usage and without a stop: the same rule
                rule = "cut"
                out.cut = text
            prompt_tokens = prompt.tokens
            completion = count_text(price, text)
        else:
            with contextlib.suppress(HoldNotActive):
                await wallet.void(hold_id, reason="no output")
            out.settled = True
            return
        cost = price.chat_cost(prompt_tokens, completion, cached)
        if cost > held:
            log.error(
                "usage cost %d exceeds the hold %d for %s (%d+%d tokens): capturing the hold",
                cost,
                held,
                model,
                prompt_tokens,
                completion,
            )
        amount = min(cost, held)
        meta: dict[str, Any] = {
            "model": model,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "price_in": price_text(price.input),
            "price_out": price_text(price.output),
            "rule": rule,
        }
        if cached:
            meta["cached_tokens"] = cached
            meta["price_cached"] = price_text(price.cached_input or price.input)
        try:
            entry = await wallet.capture(hold_id, amount, reason=f"chat {model}", meta=meta)
            out.charged = -entry.amount
        except HoldNotActive as exc:
            log.error("chat hold %s was %s before capture: nothing charged", hold_id, exc.status)
        out.settled = True

    def _insufficient(
        self, req: Request, model: str, price: ModelPrice, prompt: Prompt, available: int
    ) -> Notice:
        needed = price.chat_cost(prompt.tokens, self.s.settings.min_reply_tokens)
        return Notice(
            t(
                "insufficient",
                req.lang,
                model=model,
                available=format_credits(max(available, 0)),
                needed=format_credits(needed),
            ),
            kind="insufficient",
        )
