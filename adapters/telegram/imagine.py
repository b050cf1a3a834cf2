"""/imagine and the buttons under its images.

The command itself is an ordinary core command (progress and the image come back as events).
A button press goes to `core.press` for the person who pressed it; the core runs and bills the
action for them, or refuses a stale or foreign button, and its first notice is shown as the
callback's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiogram import Bot, F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery
from aiogram.types import Message as TgMessage

from adapters.telegram.context import PLATFORM, TelegramContext
from adapters.telegram.inbound import ForBot
from adapters.telegram.replies import Replier, converse
from adapters.telegram.streaming import STOP_PREFIX, Target
from bot.api import CoreAPI
from bot.events import Event, Notice

_ALERT_KINDS = {"error", "insufficient"}


def build_router() -> Router:
    router = Router(name="imagine")
    router.message.register(on_imagine, Command("imagine"), ForBot(commands=True))
    router.callback_query.register(on_press, F.data, ~F.data.startswith(STOP_PREFIX))
    return router


async def on_imagine(
    message: TgMessage, bot: Bot, core: CoreAPI, tg: TelegramContext, text: str
) -> None:
    await converse(core, bot, tg, message, text)


async def on_press(query: CallbackQuery, bot: Bot, core: CoreAPI, tg: TelegramContext) -> None:
    user = query.from_user
    message = query.message
    if message is None or query.data is None:
        await query.answer()
        return
    chat = message.chat
    events = core.press(
        PLATFORM,
        str(user.id),
        str(chat.id),
        query.data,
        message_id=f"cb:{query.id}",  # the press's own id: a redelivery repeats it
        language=user.language_code,
    )
    target = Target(
        chat_id=chat.id,
        private=chat.type == "private",
        user_id=user.id,
        language=user.language_code,
        reply_to=None if chat.type == "private" else message.message_id,
    )
    await Replier(bot, tg, target).run(_answered(query, events))


async def _answered(query: CallbackQuery, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Answer the callback once: with the core's first notice, or silently when work starts."""
    answered = False
    try:
        async for event in events:
            if not answered:
                answered = True
                if isinstance(event, Notice):
                    await query.answer(event.text[:200], show_alert=event.kind in _ALERT_KINDS)
                    continue
                await query.answer()
            yield event
    finally:
        if not answered:
            await query.answer()
