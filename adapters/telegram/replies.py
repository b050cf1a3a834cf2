"""Render what the core yields into one Telegram chat: streams, texts, progress and images.

One `Replier` per conversation turn (a message or a button press); the core's events arrive
in order and each becomes Telegram calls through the per-chat pacer, so flood control and
retries are handled in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Message as TgMessage

from adapters.telegram.context import StopControl, TelegramContext
from adapters.telegram.images import ImageFetchError, send_image
from adapters.telegram.inbound import target_of, to_core
from adapters.telegram.render import render_parts
from adapters.telegram.streaming import DraftStream, EditStream, Target, edit_html, send_text
from adapters.telegram.texts import tr
from bot.api import CoreAPI
from bot.events import Event, FinalText, ImageResult, Notice, Progress, TextDelta

log = logging.getLogger(__name__)


class Replier:
    """Turns one stream of core events into messages in `target`'s chat."""

    def __init__(
        self,
        bot: Bot,
        tg: TelegramContext,
        target: Target,
        *,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.bot, self.tg, self.target = bot, tg, target
        self._stop = stop
        self._stream: DraftStream | EditStream | None = None
        self._text = ""

    async def run(self, events: AsyncIterator[Event]) -> None:
        """Render every event; a failure is logged and the user told, never left silent."""
        try:
            async for event in events:
                await self.feed(event)
        except Exception:
            log.exception("reply to chat %s failed", self.target.chat_id)
            with contextlib.suppress(TelegramAPIError):
                await self.close()
                await self._say(tr("failed", self.target.language))
            return
        await self.close()

    async def feed(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            await self._delta(event.text)
        elif isinstance(event, FinalText):
            await self._final(event.text)
        elif isinstance(event, Notice):
            await self._say(event.text)
        elif isinstance(event, Progress):
            await self._progress(event)
        elif isinstance(event, ImageResult):
            await self._image(event)

    async def close(self) -> None:
        """End a stream the core left open (no FinalText): what was written is delivered."""
        if self._stream is not None:
            await self._final(self._text)

    async def _delta(self, text: str) -> None:
        self._text += text
        if self._stream is None:
            control = (
                StopControl(self._stop, self.target.user_id) if self._stop is not None else None
            )
            cls = DraftStream if self.target.private else EditStream
            self._stream = cls(self.bot, self.tg, self.target, control)
        try:
            await self._stream.update(self._text)
        except TelegramAPIError as exc:  # a preview is optional; the final text is not
            log.info("stream preview refused: %s", exc)

    async def _final(self, text: str) -> None:
        stream, self._stream, self._text = self._stream, None, ""
        if stream is not None:
            await stream.finish(text)
        elif text.strip():
            await send_text(self.bot, self.tg, self.target, text)

    async def _say(self, text: str) -> None:
        if text.strip():
            await send_text(self.bot, self.tg, self.target, text)

    async def _progress(self, event: Progress) -> None:
        text = event.text
        if event.percent is not None and "%" not in text:
            text = f"{text} ({event.percent}%)"
        parts = render_parts(text)
        if not parts:
            return
        chat = self.target.chat_id
        message_id = self.tg.progress.get(chat, event.task_id)
        if message_id is None:
            sent = await send_text(self.bot, self.tg, self.target, text)
            if sent:
                self.tg.progress.put(chat, event.task_id, sent[0].message_id)
        elif self.tg.pacer.due(chat, self.tg.edit_interval):
            try:
                await edit_html(self.bot, self.tg, chat, message_id, parts[0], essential=False)
            except TelegramAPIError as exc:
                log.info("progress edit refused: %s", exc)

    async def _image(self, event: ImageResult) -> None:
        try:
            await send_image(self.bot, self.tg, self.target, event)
        except ImageFetchError as exc:
            log.warning("image %s could not be fetched: %s", event.task_id, exc)
            await self._say(tr("image_fetch_failed", self.target.language))
            return
        message_id = self.tg.progress.pop(self.target.chat_id, event.task_id)
        if message_id is not None:
            try:
                await self.bot.delete_message(self.target.chat_id, message_id)
            except TelegramAPIError as exc:
                log.info("could not remove the progress message: %s", exc)


async def converse(
    core: CoreAPI, bot: Bot, tg: TelegramContext, message: TgMessage, text: str
) -> None:
    """Hand `text` to the core as the sender's message and render its answer in the chat."""
    stop = asyncio.Event()
    replier = Replier(bot, tg, target_of(message), stop=stop)
    await replier.run(core.handle(to_core(message, text), stop=stop))
