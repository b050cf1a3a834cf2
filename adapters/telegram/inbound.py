"""Which Telegram messages are for the bot, and how they become core Messages.

In a private chat everything is for the bot. In a group the bot answers only commands meant
for it (`/cmd` or `/cmd@thisbot`), messages that mention it, and replies to its own messages,
so it never bills anyone for a conversation between other people.
"""

from __future__ import annotations

import re

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.filters import Filter
from aiogram.types import Message as TgMessage

from adapters.telegram.context import PLATFORM
from adapters.telegram.streaming import Target
from bot.events import Message

_COMMAND = re.compile(r"^/([A-Za-z0-9_]+)(?:@([A-Za-z0-9_]+))?(?=\s|$)")


def is_private(message: TgMessage) -> bool:
    return message.chat.type == ChatType.PRIVATE


def message_text(message: TgMessage) -> str:
    return message.text or message.caption or ""


def image_ids(message: TgMessage) -> tuple[str, ...]:
    """The file ids of the pictures a message carries: a photo (its largest size) or an image
    sent as a file."""
    if message.photo:
        return (message.photo[-1].file_id,)
    doc = message.document
    if doc is not None and (doc.mime_type or "").startswith("image/"):
        return (doc.file_id,)
    return ()


async def addressed_text(message: TgMessage, bot: Bot) -> str | None:
    """The text meant for the bot, without the bot's @name; None if not for the bot.

    A picture without a caption is "" in a private chat or as a reply to the bot, so the core
    can say it does not read pictures instead of leaving the user with silence.
    """
    text = message_text(message)
    if message.from_user is None or message.from_user.is_bot:
        return None
    if not text:
        if not image_ids(message):
            return None
        return "" if is_private(message) or _replies_to_bot(message, (await bot.me()).id) else None
    me = await bot.me()
    username = (me.username or "").lower()
    command = _COMMAND.match(text)
    if command:
        target = command.group(2)
        if target and target.lower() != username:
            return None  # a command for another bot
        return f"/{command.group(1)}{text[command.end() :]}"
    if is_private(message):
        return text
    mentioned = False
    for entity in message.entities or message.caption_entities or ():
        if entity.type == "mention":
            name = entity.extract_from(text)
            if name.lstrip("@").lower() == username:
                mentioned = True
        elif entity.type == "text_mention" and entity.user and entity.user.id == me.id:
            mentioned = True
    if _replies_to_bot(message, me.id):
        mentioned = True
    if not mentioned:
        return None
    if username:
        text = re.sub(rf"@{re.escape(username)}\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text).strip() or None


def _replies_to_bot(message: TgMessage, bot_id: int) -> bool:
    replied = message.reply_to_message
    return replied is not None and replied.from_user is not None and replied.from_user.id == bot_id


class ForBot(Filter):
    """Passes messages meant for the bot and hands handlers `text`, cleaned of the bot's name."""

    def __init__(self, *, commands: bool | None = None) -> None:
        self._commands = commands  # True: commands only; False: no commands; None: either

    async def __call__(self, message: TgMessage, bot: Bot) -> bool | dict[str, str]:
        text = await addressed_text(message, bot)
        if text is None:
            return False
        if self._commands is not None and text.startswith("/") != self._commands:
            return False
        return {"text": text}


def to_core(message: TgMessage, text: str) -> Message:
    """The core's view of a Telegram message (ids as strings, unique per chat and message)."""
    user = message.from_user
    assert user is not None
    name = user.full_name or user.username or ""
    return Message(
        platform=PLATFORM,
        user_id=str(user.id),
        chat_id=str(message.chat.id),
        message_id=f"{message.chat.id}:{message.message_id}",
        text=text,
        images=image_ids(message),
        language=user.language_code,
        user_name=name,
        is_private=is_private(message),
    )


def target_of(message: TgMessage) -> Target:
    """Where replies to `message` go: in groups as a reply to it, in its forum topic."""
    user = message.from_user
    private = is_private(message)
    return Target(
        chat_id=message.chat.id,
        private=private,
        user_id=user.id if user else 0,
        language=user.language_code if user else None,
        reply_to=None if private else message.message_id,
        thread_id=message.message_thread_id if message.is_topic_message else None,
    )


def command_args(text: str) -> str:
    """What follows the command word."""
    return text.split(maxsplit=1)[1].strip() if len(text.split(maxsplit=1)) > 1 else ""
