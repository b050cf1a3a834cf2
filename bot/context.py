"""What every flow of the core shares: its services, and the request being handled."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from billing.pricing import PriceList
from billing.wallet.base import Wallet
from bot.accounts import Accounts
from bot.conversations import Conversations
from bot.limits import InflightLimiter
from bot.settings import Settings
from bot.store.base import Store

if TYPE_CHECKING:
    from bot.providers.midjourney import MidjourneyClient
    from bot.providers.openai import OpenAIClient


@dataclass(slots=True)
class Services:
    """The core's parts, built once by bot.assemble and handed to each flow."""

    settings: Settings
    wallet: Wallet
    store: Store
    prices: PriceList
    openai: OpenAIClient
    mj: MidjourneyClient | None
    accounts: Accounts
    conversations: Conversations
    limiter: InflightLimiter


@dataclass(slots=True)
class Request:
    """One message (or button press) being handled, with the account that pays for it."""

    platform: str
    user_id: str
    chat_id: str
    message_id: str
    text: str
    lang: str
    account: str
    stop: asyncio.Event | None = None
    shows_partial: bool = True  # the platform shows text as it streams (see Message)

    @property
    def ident(self) -> str:
        """ "platform:user_id", as admins are listed in settings.admin_ids."""
        return f"{self.platform}:{self.user_id}"
