"""Finished images: fetched by us and uploaded as a file, with their action buttons.

Telegram refuses photos by URL over 5 MB and Discord's attachment URLs expire, so the bot
downloads the image itself (httpx) and uploads the bytes. The buttons carry the core's
`Action.data` unchanged; the core decides what a press means and who may press.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import httpx
from aiogram import Bot
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    ReplyParameters,
)
from aiogram.types import Message as TgMessage

from adapters.telegram.context import TelegramContext
from adapters.telegram.render import CAPTION_LIMIT, render_parts
from adapters.telegram.streaming import Target
from bot.events import Action, ImageResult

log = logging.getLogger(__name__)

PHOTO_LIMIT = 10 * 1024 * 1024  # larger images go as a document
CALLBACK_DATA_LIMIT = 64


class ImageFetchError(Exception):
    """The image could not be downloaded."""


def keyboard(actions: tuple[Action, ...]) -> InlineKeyboardMarkup | None:
    """Rows of up to four buttons, a new row when the label's kind changes (U, V, then others)."""
    rows: list[list[InlineKeyboardButton]] = []
    kind = None
    for action in actions:
        if len(action.data.encode()) > CALLBACK_DATA_LIMIT:
            log.error("action %r has callback data over 64 bytes; button left out", action.label)
            continue
        label = action.label.strip()
        this = label[0].upper() if len(label) == 2 and label[1].isdigit() else "*"
        if not rows or this != kind or len(rows[-1]) >= 4:
            rows.append([])
        kind = this
        rows[-1].append(InlineKeyboardButton(text=action.label, callback_data=action.data))
    return InlineKeyboardMarkup(inline_keyboard=rows) if rows else None


async def fetch(http: httpx.AsyncClient, url: str, limit: int, attempts: int = 3) -> bytes:
    """The image's bytes, at most `limit`; a few tries, since a fresh CDN file can lag."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            async with http.stream("GET", url) as response:
                response.raise_for_status()
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ImageFetchError(f"image over {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except ImageFetchError:
            raise
        except httpx.HTTPError as exc:
            last = exc
    raise ImageFetchError(str(last))


def _filename(url: str, task_id: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else "png"
    if suffix not in {"png", "jpg", "jpeg", "webp", "gif"}:
        suffix = "png"
    return f"{task_id or 'image'}.{suffix}"


async def send_image(
    bot: Bot, tg: TelegramContext, target: Target, result: ImageResult
) -> TgMessage | None:
    """Download the result and upload it as a photo (a document if large) with its buttons."""
    data = await fetch(tg.http, result.url, tg.max_image_bytes)
    file = BufferedInputFile(data, filename=_filename(result.url, result.task_id))
    parts = render_parts(result.caption, CAPTION_LIMIT)
    caption = parts[0] if parts else None
    markup = keyboard(result.actions)
    reply = (
        ReplyParameters(message_id=target.reply_to, allow_sending_without_reply=True)
        if target.reply_to
        else None
    )

    async def request() -> TgMessage:
        if len(data) > PHOTO_LIMIT:
            return await bot.send_document(
                target.chat_id,
                file,
                caption=caption,
                parse_mode="HTML",
                reply_markup=markup,
                reply_parameters=reply,
                message_thread_id=target.thread_id,
            )
        return await bot.send_photo(
            target.chat_id,
            file,
            caption=caption,
            parse_mode="HTML",
            reply_markup=markup,
            reply_parameters=reply,
            message_thread_id=target.thread_id,
        )

    return await tg.pacer.call(target.chat_id, request, essential=True)
