"""From a WeChat user's words to the core and back as WeChat items.

Text commands stand in for Telegram's buttons: `画 PROMPT` is `/imagine PROMPT`, and
`U1`-`U4`, `V1`-`V4`, `重绘`/`reroll` act on the user's latest image (remembered in the
Store), through `CoreAPI.press` exactly as a Telegram button would. One user's requests run one
after another, so a new question waits for the previous answer instead of being refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from weakref import WeakValueDictionary

from adapters.wechat import texts
from adapters.wechat.api import WeChatApi, WeChatApiError
from adapters.wechat.delivery import Item, text_item
from adapters.wechat.split import split_text
from bot.api import CoreAPI
from bot.events import Event, FinalText, ImageResult, Message, Notice, Progress, TextDelta
from bot.store.base import Store
from bot.store.keys import wx_image_actions_key

if TYPE_CHECKING:
    from adapters.wechat.pay import TopUps

log = logging.getLogger(__name__)

PLATFORM = "wechat"
IMAGE_TTL = 7 * 24 * 3600.0  # how long "U1" still means the user's latest image

_DRAW = re.compile(r"^\s*画\s*[:：]?\s*(?P<prompt>\S.*)$", re.S)
_ACTION = re.compile(r"^\s*(?:(?P<kind>[UuVv])\s*(?P<index>[1-4])|(?P<reroll>重绘|reroll|🔄))\s*$")

Out = Callable[[list[Item]], Awaitable[None]]


def command_text(text: str) -> str:
    """WeChat's words for core commands: `画 a cat` is `/imagine a cat`."""
    m = _DRAW.match(text)
    return f"/imagine {m.group('prompt').strip()}" if m else text


def action_token(text: str) -> str | None:
    """`u1` -> "U1", `V 3` -> "V3", `重绘`/`reroll` -> "REROLL"; None if not an action."""
    m = _ACTION.match(text)
    if m is None:
        return None
    if m.group("reroll"):
        return "REROLL"
    return f"{m.group('kind').upper()}{m.group('index')}"


def _matches(token: str, label: str, data: str) -> bool:
    label_n = label.strip().upper()
    if token == "REROLL":
        return any(w in label_n for w in ("REROLL", "🔄", "重绘")) or "reroll" in data.lower()
    return label_n == token or label_n.startswith(token + " ") or data.upper().endswith(token)


class Conversation:
    """Runs a user's message through the core and renders what it yields."""

    def __init__(
        self,
        core: CoreAPI,
        kv: Store,
        api: WeChatApi,
        *,
        text_limit: int,
        topups: TopUps | None = None,
    ) -> None:
        self.core = core
        self.kv = kv
        self.api = api
        self.text_limit = text_limit
        self.topups = topups  # adapters.wechat.pay.TopUps: `/pay 10`, `充值 10`
        self._users: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    def _lock(self, openid: str) -> asyncio.Lock:
        lock = self._users.get(openid)
        if lock is None:
            lock = asyncio.Lock()
            self._users[openid] = lock
        return lock

    async def run(self, msg: Message, out: Out) -> None:
        """Handle one message after the user's earlier ones; hand items to `out` as they come.

        A chat holds the user's turn until its answer is complete. An image request gives
        the turn back once the core has answered (submitted, refused): the picture takes a
        minute and the user may chat meanwhile.
        """
        token = action_token(msg.text)
        drawing = token is not None or msg.text.startswith("/imagine")
        lock = self._lock(msg.user_id)
        await lock.acquire()
        held = True
        try:
            if self.topups is not None and (amount := self.topups.amount(msg.text)) is not None:
                await out(await self.topups.offer(msg.user_id, amount))
                return
            footer = self.topups.help_footer(msg.text) if self.topups is not None else ""
            if token is not None:
                events = await self._press(msg, token, out)
            else:
                events = self.core.handle(msg)
            if events is None:
                return
            first = True
            async for event in events:
                # Only a request's first progress notice is worth a message: WeChat cannot
                # edit it, and customer-service messages are counted (45047).
                if isinstance(event, Progress) and not first:
                    continue
                if footer and isinstance(event, FinalText):
                    event = FinalText(event.text + footer, event.stopped)
                items = await self.render(msg.user_id, event)
                if items:
                    first = False
                    await out(items)
                    if drawing and held:
                        lock.release()
                        held = False
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("wechat: handling a message failed")
            await out([text_item(texts.failed())])
        finally:
            if held:
                lock.release()

    async def _press(self, msg: Message, token: str, out: Out) -> AsyncIterator[Event] | None:
        raw = await self.kv.get(wx_image_actions_key(msg.user_id))
        if not raw:
            await out([text_item(texts.no_image())])
            return None
        for label, data in json.loads(raw):
            if _matches(token, label, data):
                return self.core.press(
                    PLATFORM,
                    msg.user_id,
                    msg.chat_id,
                    data,
                    message_id=msg.message_id,
                    language=msg.language,
                )
        await out([text_item(texts.no_such_action(token))])
        return None

    async def render(self, openid: str, event: Event) -> list[Item]:
        """WeChat items for one core event (WeChat cannot edit a message: deltas are
        skipped, the final text is what counts)."""
        if isinstance(event, FinalText):
            return [text_item(p) for p in split_text(event.text, self.text_limit) if p.strip()]
        if isinstance(event, Notice):
            return [text_item(p) for p in split_text(event.text, self.text_limit)]
        if isinstance(event, Progress):
            return [text_item(p) for p in split_text(event.text, self.text_limit)]
        if isinstance(event, ImageResult):
            return await self._image(openid, event)
        if isinstance(event, TextDelta):
            return []
        return []

    async def _image(self, openid: str, event: ImageResult) -> list[Item]:
        """Upload the image as temporary media; the caption and the action words follow."""
        if event.actions:
            actions = [[a.label, a.data] for a in event.actions]
            await self.kv.set(
                wx_image_actions_key(openid), json.dumps(actions, ensure_ascii=False), ttl=IMAGE_TTL
            )
        caption = event.caption.strip()
        if event.actions:
            caption = f"{caption}\n\n{texts.image_actions()}".strip()
        try:
            data, ctype = await self.api.download(event.url)
            ext = {"image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}.get(ctype, "png")
            media_id = await self.api.upload_image(data, f"{event.task_id}.{ext}", ctype)
        except WeChatApiError as exc:
            log.warning("wechat: image %s not uploaded: %s", event.task_id, exc)
            return [text_item(p) for p in split_text(texts.image_link(event.url), self.text_limit)]
        items = [Item("image", media_id=media_id)]
        if caption:
            items += [text_item(p) for p in split_text(caption, self.text_limit)]
        return items
