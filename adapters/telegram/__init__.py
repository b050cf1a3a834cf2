"""The Telegram front end (aiogram 3): streamed replies, /imagine with buttons, Stars top-ups.

`creditbot run` calls `install(core, settings, app)`; it returns None when no bot token is
configured. Module map: `frontend` (Bot, Dispatcher, polling or webhook), routers per feature
(`chat`, `commands`, `imagine`, `payments`), `inbound` (which messages are for the bot, as core
Messages), `replies` (core events to Telegram calls), `streaming` (drafts and edits),
`pacing` (per-chat flood control), `render` (Markdown to safe HTML, splitting), `images`,
`stars`, `middlewares` (redelivered updates), `texts` (the adapter's own words).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from adapters.telegram.frontend import TelegramFrontEnd
    from bot.api import CoreAPI
    from bot.settings import Settings


def install(core: CoreAPI, settings: Settings, app: web.Application) -> TelegramFrontEnd | None:
    """The Telegram front end on `app`, or None when TELEGRAM_BOT_TOKEN is empty."""
    if not settings.telegram_bot_token.strip():
        return None
    from adapters.telegram.frontend import TelegramFrontEnd

    return TelegramFrontEnd(core, settings, app)


__all__ = ["install"]
