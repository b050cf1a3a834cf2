"""The WeChat front end: one Official Account, in customer-service or passive mode.

Every callback is deduplicated in the shared Store (MsgId; for events FromUserName +
CreateTime), so however many times WeChat retries, across processes and restarts, a message
starts one piece of work, gets one answer and one charge.

- customer_service: answer "success" at once; the work runs in the background and its
  replies go out through the customer-service API (kept for the next message on 45015/45047).
- passive: WeChat waits 5 seconds per try, 3 tries. The first try starts the work; each try
  answers as soon as the answer exists. Earlier tries wait past WeChat's 5 seconds (WeChat
  retries anyway); the last try answers within its window, with "reply 1" if need be.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from wechatpy.messages import BaseMessage
from wechatpy.replies import BaseReply, ImageReply, TextReply

from adapters.wechat import texts
from adapters.wechat.api import WeChatApi
from adapters.wechat.conversation import PLATFORM, Conversation, command_text
from adapters.wechat.delivery import (
    GAVE_UP,
    Answers,
    Busy,
    CustomerService,
    Item,
    Outbox,
    text_item,
)
from adapters.wechat.endpoint import Endpoint
from adapters.wechat.kvlock import KvLocks
from adapters.wechat.pay import TopUps
from adapters.wechat.split import MAX_TEXT_BYTES
from adapters.wechat.wechatpay import APP_KEY as WECHATPAY_KEY
from bot.api import CoreAPI
from bot.events import Delivery, Message, Progress
from bot.health import Status
from bot.payments.wechatpay import WeChatPay
from bot.settings import Settings
from bot.store.base import Store
from bot.store.keys import wx_seen_key, wx_tries_key, wx_user_lock

log = logging.getLogger(__name__)

CUSTOMER_SERVICE = "customer_service"
PASSIVE = "passive"


@dataclass(frozen=True, slots=True)
class PassiveTiming:
    """WeChat's clock for passive replies (tests shrink it)."""

    window: float = 4.0  # the last try answers within this (1 s left for the way back)
    hold: float = 5.5  # earlier tries wait this long: past WeChat's 5 s, so it retries
    tries: int = 3  # WeChat's tries per MsgId
    fetch_wait: float = 4.0  # how long a "1" waits for an answer that is on its way


class WeChatFrontEnd:
    """Routes WeChat callbacks to the core and the core's replies back to WeChat."""

    def __init__(
        self,
        core: CoreAPI,
        settings: Settings,
        *,
        kv: Store | None = None,
        timing: PassiveTiming | None = None,
        language: str | None = None,
        app: web.Application | None = None,
    ) -> None:
        self.core = core
        self.app = app  # where WeChat Pay, if configured, puts its service (installed later)
        self.settings = settings
        mode = settings.wechat_mode.strip().lower()
        if mode not in (PASSIVE, CUSTOMER_SERVICE):
            log.warning("WECHAT_MODE=%r is not passive or customer_service: using the latter", mode)
        self.mode = PASSIVE if mode == PASSIVE else CUSTOMER_SERVICE
        self.timing = timing or PassiveTiming()
        self.language = language or settings.wechat_language or "zh"
        self.dedupe_ttl = float(settings.dedupe_ttl_seconds)
        self._kv_given = kv
        self._own_kv: Store | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = asyncio.Event()
        # Reachability of the WeChat API (calls update it; see WeChatApi), for /healthz.
        self.status = Status("wechat", ok=True, detail="no API call yet", recheck=self._ping)
        self.check_on_start = False  # `install` (creditbot run) asks for a token at start
        self.endpoint = Endpoint(
            settings.wechat_token,
            self.on_callback,
            appid=settings.wechat_appid,
            aes_key=settings.wechat_aes_key,
        )
        self._wire(kv or core.kv)
        # The core may resume a finished image before start(): take it now, send it once started.
        core.set_sink(PLATFORM, self.on_delivery)

    def _wire(self, kv: Store) -> None:
        self.kv = kv
        self.locks = KvLocks(kv)
        self.api = WeChatApi(
            self.settings.wechat_api_base,
            self.settings.wechat_appid,
            self.settings.wechat_secret,
            kv,
            status=self.status,
        )
        self.outbox = Outbox(kv)
        self.busy = Busy(kv)
        self.answers = Answers(kv, self.outbox, self.locks, self.busy)
        self.customer_service = CustomerService(self.api, self.outbox, self.locks)
        # In passive mode a "reply 1" footer may follow the text: leave room for it.
        limit = MAX_TEXT_BYTES
        if self.mode == PASSIVE:
            limit -= len(texts.more_waiting().encode("utf-8"))
        self.topups = TopUps(self._wechat_pay, self.api, with_qr=self.mode == CUSTOMER_SERVICE)
        self.conversation = Conversation(
            self.core, kv, self.api, text_limit=limit, topups=self.topups
        )

    def _wechat_pay(self) -> WeChatPay | None:
        """WeChat Pay's service, looked up when needed: it installs after this front end."""
        return None if self.app is None else self.app.get(WECHATPAY_KEY)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the shared Redis (when REDIS_URL is set) and take the core's late deliveries."""
        if self._kv_given is None and self.settings.redis_url:
            from bot.store import open_store

            self._own_kv = await open_store(self.settings.redis_url)
            await self.api.close()
            self._wire(self._own_kv)
        self._started.set()
        log.info("wechat: front end ready (%s mode)", self.mode)
        if self.check_on_start:  # a wrong secret or IP whitelist shows now, not on a user
            self._spawn(self._ping())

    async def _ping(self) -> None:
        try:
            await self.api.ping()
        except Exception as exc:
            log.warning("wechat: the API check failed: %s", exc)

    async def stop(self, grace: float = 5.0) -> None:
        """Let running work finish for a moment, then cancel it (holds are voided by the
        core); replies already decided stay in the Store."""
        self.status.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.api.close()
        if self._own_kv is not None:
            await self._own_kv.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- callbacks -----------------------------------------------------------------------

    async def _until_started(self) -> None:
        """Callbacks and deliveries that come in the moment before start() wait for it."""
        if not self._started.is_set():
            await asyncio.wait_for(self._started.wait(), timeout=30.0)

    async def on_callback(self, wx: BaseMessage) -> BaseReply | None:
        """One verified, decrypted callback: the passive reply, or None for "success"."""
        await self._until_started()
        openid = str(wx.source)
        if wx.type == "event":
            return await self._event(wx)
        text = _text_of(wx)
        if text is None:
            return _text_reply(wx, texts.unsupported())
        msg = Message(
            platform=PLATFORM,
            user_id=openid,
            chat_id=openid,
            message_id=str(wx.id),
            text=command_text(text),
            images=(str(wx.image),) if wx.type == "image" and wx.image else (),
            language=self.language,
            shows_partial=False,  # a WeChat reply is sent whole: partial text is never seen
        )
        key = f"{wx.target}:{wx.id}"
        if self.mode == CUSTOMER_SERVICE:
            if await self.kv.add(wx_seen_key(key), "1", ttl=self.dedupe_ttl):
                self._spawn(self._customer_service_job(msg))
            return None
        return await self._passive(wx, msg, key)

    async def _event(self, wx: BaseMessage) -> BaseReply | None:
        if wx.event not in ("subscribe", "subscribe_scan"):
            return None
        key = f"{wx.target}:{wx.source}:{wx.time}"
        if not await self.kv.add(wx_seen_key(key), "1", ttl=self.dedupe_ttl):
            return None  # a retry: the welcome went out with the first try
        trial = self.settings.wechat_trial_credits
        granted = False
        if trial > 0:
            granted = await self.core.grant_trial(PLATFORM, str(wx.source), trial * 1000)
        return _text_reply(
            wx, texts.welcome(trial if granted else 0, wechat_pay=self.topups.configured)
        )

    # --- customer-service mode -------------------------------------------------------------

    async def _customer_service_job(self, msg: Message) -> None:
        """The user wrote, so the 48-hour window is open: first what was kept, then this."""
        try:
            flushed = await self.customer_service.flush(msg.user_id)
            if flushed and msg.text.strip() == texts.FETCH_WORD:
                return
            await self.conversation.run(
                msg, lambda items: self.customer_service.deliver(msg.user_id, items)
            )
        except Exception:
            log.exception("wechat: customer-service job failed")

    # --- passive mode ----------------------------------------------------------------------

    async def _passive(self, wx: BaseMessage, msg: Message, key: str) -> BaseReply | None:
        tries = await self.kv.incr(wx_tries_key(key), ttl=self.dedupe_ttl)
        if tries == 1:  # the first try starts the work; every try waits for its answer
            self.answers.local.add(key)
            self._spawn(self._passive_job(msg, key))
        last = tries >= self.timing.tries
        item = await self.answers.wait(key, self.timing.window if last else self.timing.hold)
        if item is None and last:
            item = await self.answers.give_up(key, msg.user_id)
        if item is None:
            return None  # WeChat stopped listening already and retries
        if item is GAVE_UP or item.kind == GAVE_UP.kind:
            return _text_reply(wx, texts.still_working())
        return await self._answer(wx, msg.user_id, key, item)

    async def _answer(self, wx: BaseMessage, openid: str, key: str, item: Item) -> BaseReply | None:
        if item.kind == "image":
            return ImageReply(message=wx, media_id=item.media_id)
        if item.kind != "text":
            return None
        text = item.text
        if await self.outbox.load(openid) or await self.busy.active(openid, besides=key):
            text += texts.more_waiting()
        return _text_reply(wx, text)

    async def _passive_job(self, msg: Message, key: str) -> None:
        openid = msg.user_id
        try:
            if msg.text.strip() == texts.FETCH_WORD and await self._fetch(key, openid):
                return
            await self.conversation.run(msg, lambda items: self.answers.offer(key, openid, items))
        except Exception:
            log.exception("wechat: passive job failed")
        finally:
            await self.answers.finish(key, openid)
            self.answers.local.discard(key)

    async def _fetch(self, key: str, openid: str) -> bool:
        """A "1": hand out the next waiting item. False when nothing waits and nothing is
        running, so "1" is an ordinary message."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timing.fetch_wait
        while True:
            async with self.locks.hold(wx_user_lock(openid)):
                item = await self.outbox.pop(openid)
            if item is not None:
                await self.answers.offer(key, openid, [item])
                return True
            if not await self.busy.active(openid):
                return False
            if loop.time() >= deadline:
                await self.answers.offer(key, openid, [text_item(texts.nothing_waiting_yet())])
                return True
            await asyncio.sleep(0.05)

    # --- deliveries outside a callback -------------------------------------------------------

    async def on_delivery(self, delivery: Delivery) -> None:
        """A late event from the core (an image finished after a restart): send it now in
        customer-service mode, keep it for "1" in passive mode."""
        await self._until_started()
        if isinstance(delivery.event, Progress):
            return  # progress of a resumed task: only its result is worth a message
        items = await self.conversation.render(delivery.user_id, delivery.event)
        if not items:
            return
        if self.mode == CUSTOMER_SERVICE:
            await self.customer_service.deliver(delivery.user_id, items)
        else:
            async with self.locks.hold(wx_user_lock(delivery.user_id)):
                await self.outbox.push(delivery.user_id, items)


def _text_reply(wx: BaseMessage, text: str) -> TextReply:
    """A passive text reply. wechatpy writes Content as CDATA verbatim, so a "]]>" in a model's
    reply (code often has one) would end it early and break the XML: split it across two
    CDATA sections instead."""
    return TextReply(message=wx, content=text.replace("]]>", "]]]]><![CDATA[>"))


def _text_of(wx: BaseMessage) -> str | None:
    """The words of a message: text, a voice message's recognition, or "" for a picture."""
    if wx.type == "text":
        return str(wx.content or "")
    if wx.type == "voice" and getattr(wx, "recognition", None):
        return str(wx.recognition)
    if wx.type == "image":
        return ""
    return None
