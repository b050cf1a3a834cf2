"""Plain messages to the bot become chat turns; the asker can stop a reply mid-stream.

Private chats stop through the draft's own stop button (a `stopped_message_generation`
update); groups through the inline "Stop" button under the growing message. Either way the
core ends the generation and bills what was generated.
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.types import CallbackQuery, MessageGenerationStopped
from aiogram.types import Message as TgMessage

from adapters.telegram.context import TelegramContext
from adapters.telegram.inbound import ForBot
from adapters.telegram.replies import converse
from adapters.telegram.streaming import STOP_PREFIX, draft_handle
from adapters.telegram.texts import tr
from bot.api import CoreAPI


def build_router() -> Router:
    router = Router(name="chat")
    router.message.register(on_message, ForBot(commands=False))
    router.callback_query.register(on_stop_button, F.data.startswith(STOP_PREFIX))
    router.stopped_message_generation.register(on_draft_stopped)
    return router


async def on_message(
    message: TgMessage, bot: Bot, core: CoreAPI, tg: TelegramContext, text: str
) -> None:
    await converse(core, bot, tg, message, text)


async def on_draft_stopped(event: MessageGenerationStopped, tg: TelegramContext) -> None:
    control = tg.stops.get(draft_handle(event.chat.id, event.draft_id))
    if control is not None:
        control.event.set()


async def on_stop_button(query: CallbackQuery, tg: TelegramContext) -> None:
    language = query.from_user.language_code
    control = tg.stops.get(query.data or "")
    if control is None:
        await query.answer(tr("stop_gone", language))
    elif control.owner != query.from_user.id:
        await query.answer(tr("stop_not_yours", language), show_alert=True)
    else:
        control.event.set()
        await query.answer(tr("stopping", language))
