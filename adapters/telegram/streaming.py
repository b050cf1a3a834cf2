"""A reply as it is being written: drafts in private chats, throttled edits in groups.

Private chats get `sendMessageDraft` (an animated, ephemeral preview with Telegram's own stop
button) and then one `sendMessage` per part with the whole text. Groups cannot show drafts, so
the reply is sent once and edited, at most about once a second per chat, with an inline "Stop"
button for the asker. Either way the final text is delivered whole, whatever happened to the
previews (flood control, "message is not modified", a refused draft).
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    ReplyParameters,
)
from aiogram.types import Message as TgMessage

from adapters.telegram.context import StopControl, TelegramContext
from adapters.telegram.render import plain_text, render_parts
from adapters.telegram.texts import tr

log = logging.getLogger(__name__)

STOP_PREFIX = "tgstop:"
_draft_ids = itertools.count(random.randrange(1, 2**30))
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a reply goes and who it answers."""

    chat_id: int
    private: bool
    user_id: int
    language: str | None = None
    reply_to: int | None = None  # in groups, the asker's message
    thread_id: int | None = None  # a forum topic


def draft_handle(chat_id: int, draft_id: int) -> str:
    return f"draft:{chat_id}:{draft_id}"


async def send_html(
    bot: Bot,
    tg: TelegramContext,
    target: Target,
    part: str,
    *,
    reply: bool = False,
    markup: InlineKeyboardMarkup | None = None,
    essential: bool = True,
) -> TgMessage | None:
    """Send one rendered part; plain text if Telegram refuses the HTML (it should never)."""
    reply_parameters = (
        ReplyParameters(message_id=target.reply_to, allow_sending_without_reply=True)
        if reply and target.reply_to
        else None
    )

    async def request() -> TgMessage:
        try:
            return await bot.send_message(
                target.chat_id,
                part,
                parse_mode="HTML",
                message_thread_id=target.thread_id,
                reply_parameters=reply_parameters,
                reply_markup=markup,
                link_preview_options=_NO_PREVIEW,
            )
        except TelegramBadRequest as exc:
            if "parse entities" not in exc.message:
                raise
            log.warning("Telegram refused rendered HTML (%s); sending plain text", exc.message)
            return await bot.send_message(
                target.chat_id,
                plain_text(part),
                parse_mode=None,
                message_thread_id=target.thread_id,
                reply_parameters=reply_parameters,
                reply_markup=markup,
            )

    return await tg.pacer.call(target.chat_id, request, essential=essential)


async def edit_html(
    bot: Bot,
    tg: TelegramContext,
    chat_id: int,
    message_id: int,
    part: str,
    *,
    markup: InlineKeyboardMarkup | None = None,
    essential: bool = True,
) -> object:
    """Edit one message to `part` ("message is not modified" counts as done)."""

    async def request() -> object:
        return await bot.edit_message_text(
            text=part,
            chat_id=chat_id,
            message_id=message_id,
            parse_mode="HTML",
            reply_markup=markup,
            link_preview_options=_NO_PREVIEW,
        )

    return await tg.pacer.call(chat_id, request, essential=essential)


async def send_text(
    bot: Bot,
    tg: TelegramContext,
    target: Target,
    markdown: str,
    *,
    markup: InlineKeyboardMarkup | None = None,
) -> list[TgMessage]:
    """A whole reply as one message per part, in order; `markup` goes under the last."""
    parts = render_parts(markdown)
    sent: list[TgMessage] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        message = await send_html(
            bot, tg, target, part, reply=i == 0, markup=markup if last else None
        )
        if message is not None:
            sent.append(message)
    return sent


class DraftStream:
    """A private-chat reply previewed with `sendMessageDraft`, then sent whole."""

    def __init__(
        self, bot: Bot, tg: TelegramContext, target: Target, stop: StopControl | None
    ) -> None:
        self._bot, self._tg, self._target = bot, tg, target
        self.draft_id = next(_draft_ids)
        self._handle = draft_handle(target.chat_id, self.draft_id)
        self._can_stop = stop is not None
        self._broken = False
        if stop is not None:
            tg.stops.add(self._handle, stop)

    async def update(self, text: str) -> None:
        if self._broken or not self._tg.pacer.due(self._target.chat_id, self._tg.draft_interval):
            return
        parts = render_parts(text)
        if not parts:
            return
        part = parts[-1]  # the part being written now

        async def request() -> bool:
            return await self._bot.send_message_draft(
                chat_id=self._target.chat_id,
                draft_id=self.draft_id,
                text=part,
                parse_mode="HTML",
                message_thread_id=self._target.thread_id,
                can_stop=self._can_stop or None,
            )

        try:
            await self._tg.pacer.call(self._target.chat_id, request, essential=False)
        except TelegramAPIError as exc:
            log.warning("draft refused (%s); the reply will arrive whole at the end", exc)
            self._broken = True

    async def finish(self, text: str) -> list[TgMessage]:
        self._tg.stops.discard(self._handle)
        return await send_text(self._bot, self._tg, self._target, text)

    def close(self) -> None:
        self._tg.stops.discard(self._handle)


class EditStream:
    """A group reply sent once and edited as it grows, with a Stop button for the asker."""

    def __init__(
        self, bot: Bot, tg: TelegramContext, target: Target, stop: StopControl | None
    ) -> None:
        self._bot, self._tg, self._target = bot, tg, target
        self._ids: list[int] = []
        self._sent: list[str] = []
        self._marked: int | None = None  # the message carrying the Stop button
        self._markup: InlineKeyboardMarkup | None = None
        self._handle = ""
        if stop is not None:
            token = secrets.token_urlsafe(12)
            self._handle = STOP_PREFIX + token
            self._markup = InlineKeyboardMarkup(
                inline_keyboard=[
                    [
                        InlineKeyboardButton(
                            text=tr("stop", target.language), callback_data=self._handle
                        )
                    ]
                ]
            )
            tg.stops.add(self._handle, stop)

    async def update(self, text: str) -> None:
        """At most one request per call, and only when the chat's edit interval has passed."""
        if not self._tg.pacer.due(self._target.chat_id, self._tg.edit_interval):
            return
        parts = render_parts(text)
        for i, part in enumerate(parts):
            markup = self._markup if i == len(parts) - 1 else None
            if i >= len(self._ids):
                await self._send(i, part, markup, essential=False)
                return
            if self._sent[i] != part or (self._marked == i) != (markup is not None):
                await self._edit(i, part, markup, essential=False)
                return

    async def finish(self, text: str) -> None:
        """Bring every message to its final part, without the Stop button."""
        self.close()
        parts = render_parts(text)
        for i, part in enumerate(parts):
            if i >= len(self._ids):
                await self._send(i, part, None, essential=True)
            elif self._sent[i] != part:
                await self._edit(i, part, None, essential=True)
            elif self._marked == i:
                await self._unmark(i)
        for i in range(len(parts), len(self._ids)):  # the reply ended shorter than previewed
            if self._marked == i:
                await self._unmark(i)
            if i > 0 or parts:
                await self._delete(i)

    def close(self) -> None:
        if self._handle:
            self._tg.stops.discard(self._handle)

    async def _send(
        self, i: int, part: str, markup: InlineKeyboardMarkup | None, *, essential: bool
    ) -> None:
        message = await send_html(
            self._bot,
            self._tg,
            self._target,
            part,
            reply=i == 0,
            markup=markup,
            essential=essential,
        )
        if message is not None:
            self._ids.append(message.message_id)
            self._sent.append(part)
            if markup is not None:
                self._marked = i

    async def _edit(
        self, i: int, part: str, markup: InlineKeyboardMarkup | None, *, essential: bool
    ) -> None:
        try:
            done = await edit_html(
                self._bot,
                self._tg,
                self._target.chat_id,
                self._ids[i],
                part,
                markup=markup,
                essential=essential,
            )
        except TelegramBadRequest as exc:
            if not essential:
                log.info("edit refused mid-stream: %s", exc.message)
                return
            # The message is gone (deleted by an admin?): the final part goes out anew.
            log.info("edit refused (%s); sending the part as a new message", exc.message)
            message = await send_html(self._bot, self._tg, self._target, part, markup=markup)
            if message is None:
                return
            self._ids[i] = message.message_id
            done = True
        if done is None:  # skipped under flood control; the next update tries again
            return
        self._sent[i] = part
        self._marked = i if markup is not None else (None if self._marked == i else self._marked)

    async def _unmark(self, i: int) -> None:
        async def request() -> object:
            return await self._bot.edit_message_reply_markup(
                chat_id=self._target.chat_id, message_id=self._ids[i], reply_markup=None
            )

        await self._tg.pacer.call(self._target.chat_id, request, essential=True)
        self._marked = None

    async def _delete(self, i: int) -> None:
        async def request() -> bool:
            return await self._bot.delete_message(self._target.chat_id, self._ids[i])

        try:
            await self._tg.pacer.call(self._target.chat_id, request, essential=False)
        except TelegramAPIError as exc:
            log.info("could not delete a stale reply part: %s", exc)
