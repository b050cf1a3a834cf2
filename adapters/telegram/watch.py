"""Whether the Bot API can be reached, as every call shows it, for /healthz and the supervisor.

`ApiWatch` is a session middleware: every Bot API call (getUpdates while polling, each send)
passes through it, so the front end's `Status` follows what really happens with no calls of
its own. A call that cannot reach Telegram, or that Telegram answers with "unauthorized",
"conflict" or a server error, marks it down; any other answer (even a refusal of that one call,
such as "message is not modified") shows Telegram is there and marks it up.

The words it reports are fixed phrases: an exception's text may hold the Bot API URL, and the
URL holds the token.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from aiogram.client.session.middlewares.base import BaseRequestMiddleware
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramServerError,
    TelegramUnauthorizedError,
)

from bot.health import Status

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.client.session.middlewares.base import NextRequestMiddlewareType
    from aiogram.methods import TelegramMethod


def describe(exc: BaseException) -> str:
    """What a failed Bot API call says of Telegram's health, in words safe to publish."""
    if isinstance(exc, TelegramNetworkError):
        return "Bot API unreachable"
    if isinstance(exc, TelegramUnauthorizedError):
        return "TELEGRAM_BOT_TOKEN refused (401)"
    if isinstance(exc, TelegramConflictError):
        return "conflict (409): another process polls this bot, or a webhook is set"
    if isinstance(exc, TelegramServerError):
        return "Bot API server error"
    return f"Bot API refused: {type(exc).__name__}"


def fatal(exc: BaseException) -> bool:
    """True when the failure means the bot cannot work at all (not one call's refusal)."""
    if isinstance(exc, TelegramEntityTooLarge):  # a network error by class, but one file's
        return False
    return isinstance(
        exc,
        TelegramNetworkError
        | TelegramUnauthorizedError
        | TelegramConflictError
        | TelegramServerError,
    )


def redact(text: str, token: str) -> str:
    """`text` without the bot token (aiohttp errors quote the URL, which holds it)."""
    return text.replace(token, "<token>") if token else text


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds before try number `failures` + 1: doubling from `base`, at most `cap`, with
    a little jitter so several processes do not knock in step."""
    delay = min(cap, base * 2 ** max(0, failures - 1))
    return delay * (0.9 + random.random() / 5)


class ApiWatch(BaseRequestMiddleware):
    """Marks `status` from the outcome of every Bot API call, once `active` (connected)."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.active = False  # until the supervisor has connected, it alone says "up"

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[Any],
        bot: Bot,
        method: TelegramMethod[Any],
    ) -> Any:
        try:
            response = await make_request(bot, method)
        except TelegramAPIError as exc:
            if fatal(exc):
                self.status.down(describe(exc))
            else:
                self._reached()
            raise
        self._reached()
        return response

    def _reached(self) -> None:
        if self.active and not self.status.ok:
            self.status.up("Bot API reachable again")
