"""`CoreAPI`: the one interface through which adapters talk to the core.

Every front end (Telegram, WeChat, WeChat Pay, the console, the HTTP server) is written
against this Protocol, not against `bot.core.Core`, so a front end's tests can hand it a small
fake and the core can change inside without the adapters noticing. `Core` implements it; a
method an adapter needs is added here (and to Core) rather than reached for privately.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from billing.wallet.base import Entry, Wallet
from bot.events import Delivery, Event, Message
from bot.health import Status
from bot.scheduler import Scheduler
from bot.store.base import Store

Sink = Callable[[Delivery], Awaitable[None]]
"""Where a platform's late events go (see CoreAPI.set_sink)."""


class CoreAPI(Protocol):
    """The conversation core as every adapter sees it."""

    @property
    def kv(self) -> Store:
        """The key-value store, for adapters' own non-money state (dedupe, outboxes...)."""
        ...

    @property
    def scheduler(self) -> Scheduler:
        """The one scheduler of periodic jobs, where a front end adds its own (Stars retry,
        WeChat Pay reconciliation)."""
        ...

    @property
    def wallet(self) -> Wallet:
        """The wallet, read by the metrics endpoint (open holds); adapters move no money
        through it: payments go through credit_payment / reverse_payment."""
        ...

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start background work and resume unsettled tasks (after the sinks are set)."""

    async def close(self) -> None:
        """Stop background work and close what the composition root opened."""

    # --- conversation -------------------------------------------------------------------

    def handle(self, msg: Message, *, stop: asyncio.Event | None = None) -> AsyncIterator[Event]:
        """The events answering one message (a redelivered message id yields nothing)."""
        ...

    def press(
        self,
        platform: str,
        user_id: str,
        chat_id: str,
        data: str,
        *,
        message_id: str,
        language: str | None = None,
    ) -> AsyncIterator[Event]:
        """The events answering a button press (`data` is an Action.data)."""
        ...

    def set_sink(self, platform: str, sink: Sink) -> None:
        """Where events for `platform` go when no handle() call is waiting for them."""

    async def deliver(self, delivery: Delivery) -> None:
        """Send an event to a user outside any handle() call (through the platform's sink)."""

    def upstream_statuses(self) -> dict[str, Status]:
        """How each upstream client's last request went ("upstream", "midjourney"), for
        /healthz."""
        ...

    def mj_notify(self, task_id: str) -> bool:
        """midjourney-proxy's notifyHook: re-fetch the task now; True if it is one of ours."""
        ...

    # --- accounts and money -------------------------------------------------------------

    async def account_of(self, platform: str, user_id: str) -> str:
        """The wallet account a platform user pays from (after /link)."""
        ...

    async def grant_trial(self, platform: str, user_id: str, amount_milli: int) -> bool:
        """Free credits once per platform user; True if granted by this call."""
        ...

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
        """Credit a confirmed payment once per `key`."""
        ...

    async def reverse_payment(self, key: str, *, reason: str) -> Entry:
        """Take a refunded payment's credits back (as much as is still available)."""
        ...

    async def stars_paid(
        self, charge_id: str, user_id: str, credits_milli: int, stars: int, *, receipt_ttl: float
    ) -> bool:
        """A Telegram Stars payment arrived: credit it once; True if the receipt is still to
        be sent."""
        ...

    async def retry_stars(self) -> int:
        """Credit the Stars payments whose crediting failed earlier; returns how many."""
        ...

    async def reverse_stars(self, charge_id: str, *, reason: str) -> Entry:
        """A refunded Stars charge: take its credits back."""
        ...
