"""Every other command goes to the core as typed; the command menu is registered here.

The core owns the commands (/start, /help, /balance, /new, /model, /price, /usage, /link and
the admin ones); this router only makes sure a command meant for the bot reaches it, and tells
Telegram which commands to list, in English and Chinese.
"""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand
from aiogram.types import Message as TgMessage

from adapters.telegram.context import TelegramContext
from adapters.telegram.inbound import ForBot
from adapters.telegram.replies import converse
from bot.api import CoreAPI

log = logging.getLogger(__name__)

MENU: dict[str, list[tuple[str, str]]] = {
    "en": [
        ("start", "Start and see your credits"),
        ("help", "What the bot does, prices, commands"),
        ("balance", "Your credits"),
        ("topup", "Add credits (Telegram Stars, or /topup CODE)"),
        ("imagine", "Make an image with Midjourney"),
        ("new", "Start a fresh conversation"),
        ("model", "List models or switch"),
        ("price", "The price list"),
        ("usage", "Your detailed consumption log"),
        ("link", "Use one wallet on Telegram and WeChat"),
    ],
    "zh": [
        ("start", "开始，并查看积分"),
        ("help", "功能、价格与命令"),
        ("balance", "我的积分"),
        ("topup", "充值（Telegram 星星，或 /topup 兑换码）"),
        ("imagine", "用 Midjourney 画图"),
        ("new", "开始新的对话"),
        ("model", "查看或切换模型"),
        ("price", "价格表"),
        ("usage", "详细消费记录"),
        ("link", "在 Telegram 和微信共用一个钱包"),
    ],
}


def build_router() -> Router:
    router = Router(name="commands")
    router.message.register(on_command, ForBot(commands=True))
    return router


async def on_command(
    message: TgMessage, bot: Bot, core: CoreAPI, tg: TelegramContext, text: str
) -> None:
    await converse(core, bot, tg, message, text)


async def register_menu(bot: Bot) -> None:
    """The command menu: English by default, Chinese for users whose language is zh."""
    for language, items in MENU.items():
        commands = [BotCommand(command=c, description=d) for c, d in items]
        try:
            code = None if language == "en" else language
            await bot.set_my_commands(commands, language_code=code)
        except TelegramAPIError as exc:
            log.warning("could not register the %s command menu: %s", language, exc)
