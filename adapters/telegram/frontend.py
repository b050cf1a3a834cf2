"""The Telegram front end: one Bot, one Dispatcher, long polling or a webhook on the shared app.

Long polling is the default (nothing to expose). With TELEGRAM_WEBHOOK_URL set, Telegram
posts updates to TELEGRAM_WEBHOOK_PATH on the bot's HTTP server, and each request must carry
TELEGRAM_WEBHOOK_SECRET in `X-Telegram-Bot-Api-Secret-Token` (401 otherwise): without it anyone
could post a forged `successful_payment`, so webhook mode refuses to start without a secret.

Connecting is supervised: getMe, then setWebhook (or deleteWebhook and polling), tried again
with a doubling delay (capped) for as long as Telegram cannot be reached, as warnings and after
a few failures as errors, while the rest of the bot runs. `status` says whether the Bot API is
reachable (adapters.telegram.watch follows every call), for /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from adapters.telegram import chat, commands, imagine, payments
from adapters.telegram.context import PLATFORM, TelegramContext
from adapters.telegram.middlewares import DedupeMiddleware
from adapters.telegram.replies import Replier
from adapters.telegram.stars import parse_packs
from adapters.telegram.streaming import Target
from adapters.telegram.watch import ApiWatch, backoff, describe, redact
from bot.api import CoreAPI
from bot.config import ConfigError
from bot.events import Delivery, TextDelta
from bot.health import Status
from bot.payments.stars import PENDING_RETRY_SECONDS, RETRY_JOB
from bot.settings import Settings

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 1.0  # first wait after a failed connection; doubles each time...
RETRY_MAX_SECONDS = 60.0  # ...up to this (a fixed proxy or network is noticed within it)
ERROR_AFTER = 5  # failed connections logged as warnings before they are logged as errors


def admin_ids(settings: Settings) -> frozenset[str]:
    """Telegram user ids of the operators: "telegram:ID" in ADMIN_IDS (a bare ID works too)."""
    ids = set()
    for item in settings.admin_ids:
        platform, sep, user = str(item).strip().rpartition(":")
        if not sep or platform == PLATFORM:
            ids.add(user)
    return frozenset(ids)


def make_session(settings: Settings) -> AiohttpSession:
    """The Bot API session: api.telegram.org or TELEGRAM_API_BASE (a self-hosted Bot API
    server), through TELEGRAM_PROXY (http:// or socks5://, via aiohttp-socks) when set."""
    options: dict[str, Any] = {}
    base = settings.telegram_api_base.strip()
    if base:
        options["api"] = TelegramAPIServer.from_base(base)
    proxy = settings.telegram_proxy.strip()
    if proxy:
        options["proxy"] = proxy
    return AiohttpSession(**options)


def make_bot(settings: Settings) -> Bot:
    """A Bot on the session of `make_session`."""
    return Bot(settings.telegram_bot_token, session=make_session(settings))


def make_dispatcher(core: CoreAPI, tg: TelegramContext, bot_id: int) -> Dispatcher:
    """Routers per feature; the core and the front end's state as workflow data."""
    dp = Dispatcher(name="creditbot-telegram", core=core, tg=tg)
    dp.update.outer_middleware(DedupeMiddleware(core.kv, bot_id, tg.dedupe_ttl))
    dp.include_routers(
        payments.build_router(),
        imagine.build_router(),
        commands.build_router(),
        chat.build_router(),
    )
    return dp


class TelegramFrontEnd:
    """Started and stopped by `creditbot run` beside the other front ends."""

    def __init__(
        self,
        core: CoreAPI,
        settings: Settings,
        app: web.Application | None = None,
        *,
        bot: Bot | None = None,
        tg: TelegramContext | None = None,
    ) -> None:
        self.core = core
        self.settings = settings
        self.bot = bot or make_bot(settings)
        self.tg = tg or TelegramContext(
            http=httpx.AsyncClient(timeout=httpx.Timeout(30.0), follow_redirects=True),
            packs=parse_packs(settings.telegram_stars_packs),
            admin_ids=admin_ids(settings),
            default_language=settings.default_language,
            dedupe_ttl=float(settings.dedupe_ttl_seconds),
        )
        self.dp = make_dispatcher(core, self.tg, self.bot.id)
        self.webhook = bool(settings.telegram_webhook_url)
        self.status = Status("telegram", ok=False, detail="connecting", recheck=self._recheck)
        self._watch = ApiWatch(self.status)
        self.bot.session.middleware(self._watch)
        self.retry_base = RETRY_BASE_SECONDS
        self.retry_max = RETRY_MAX_SECONDS
        self._supervisor: asyncio.Task[None] | None = None
        self._polling = False  # start_polling is running
        self._stopping = False
        self._menu: asyncio.Task[None] | None = None
        # How often the core's scheduler retries Stars payments whose crediting failed.
        self.pending_retry_seconds = PENDING_RETRY_SECONDS
        self._handler: SimpleRequestHandler | None = None
        if self.webhook:
            if not settings.telegram_webhook_secret:
                raise ConfigError(
                    "TELEGRAM_WEBHOOK_URL is set but TELEGRAM_WEBHOOK_SECRET is empty: "
                    "a webhook without a secret would accept forged updates (and payments)"
                )
            if app is None:
                raise ValueError("webhook mode needs the HTTP application to mount on")
            self._handler = SimpleRequestHandler(
                dispatcher=self.dp,
                bot=self.bot,
                secret_token=settings.telegram_webhook_secret,
                handle_in_background=True,
            )
            self._handler.register(app, path=settings.telegram_webhook_path)

    async def start(self) -> None:
        """Register the sink and the Stars retry (on the core's scheduler: now, then every
        little while), then connect in the background: an unreachable Telegram must hold up
        neither the other front ends nor the process."""
        self.core.set_sink(PLATFORM, self.deliver)
        self.core.scheduler.every(
            RETRY_JOB, self.pending_retry_seconds, self.core.retry_stars, at_start=True
        )
        self._supervisor = asyncio.create_task(self._supervise(), name="telegram-connect")

    async def _connect(self) -> None:
        """One try: getMe, then set the webhook, or remove any webhook before polling."""
        await self.bot.me()
        if self.webhook:
            await self.bot.set_webhook(
                self.settings.telegram_webhook_url,
                secret_token=self.settings.telegram_webhook_secret,
                allowed_updates=self.dp.resolve_used_update_types(),
            )
            log.info("Telegram webhook set; listening on %s", self.settings.telegram_webhook_path)
        else:  # getUpdates is refused while a webhook is set
            await self.bot.delete_webhook(drop_pending_updates=False)

    async def _recheck(self) -> None:
        """Down after connecting (a webhook gets no traffic to show Telegram is back): one
        getMe, whose outcome ApiWatch records. While connecting, the supervisor is trying."""
        if self._watch.active:
            await self.bot.get_me()

    async def _supervise(self) -> None:
        """Connect until it works, then poll (aiogram retries getUpdates itself; a polling
        that ends on its own is started again). Never gives up while the process runs."""
        failures = 0
        while not self._stopping:
            try:
                await self._connect()
            except Exception as exc:
                failures += 1
                delay = backoff(failures, self.retry_base, self.retry_max)
                self.status.down(describe(exc))
                log.log(
                    logging.WARNING if failures < ERROR_AFTER else logging.ERROR,
                    "Telegram: cannot connect (%s: %s); try %d failed, next in %.0f s",
                    describe(exc),
                    redact(str(exc), self.settings.telegram_bot_token),
                    failures,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._watch.active = True
            self.status.up("webhook set" if self.webhook else "polling")
            if self._menu is None:
                self._menu = asyncio.create_task(
                    commands.register_menu(self.bot), name="telegram-menu"
                )
            if self.webhook:
                return
            log.info("Telegram long polling started")
            self._polling = True
            try:
                await self.dp.start_polling(
                    self.bot,
                    handle_signals=False,
                    close_bot_session=False,
                    allowed_updates=self.dp.resolve_used_update_types(),
                )
            except Exception:
                log.exception("Telegram polling stopped on an error; starting it again")
            finally:
                self._polling = False
                self._watch.active = False
            if not self._stopping:
                self.status.down("polling stopped")
                await asyncio.sleep(backoff(1, self.retry_base, self.retry_max))

    async def stop(self) -> None:
        """Stop taking updates, let running handlers finish, release connections."""
        self._stopping = True
        self.status.cancel()
        await self.core.scheduler.cancel(RETRY_JOB)
        if self._menu is not None and not self._menu.done():
            self._menu.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._menu
        if self._supervisor is not None:
            if self._polling:  # a graceful stop: running handlers finish
                with contextlib.suppress(RuntimeError):
                    await self.dp.stop_polling()
            if not self._supervisor.done():  # still connecting, or waiting to try again
                self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self.bot.session.close()
        await self.tg.http.aclose()

    async def deliver(self, delivery: Delivery) -> None:
        """An event for a chat outside any handler (an image finished after a restart)."""
        if isinstance(delivery.event, TextDelta):
            return
        chat_id = int(delivery.chat_id)
        target = Target(chat_id=chat_id, private=chat_id > 0, user_id=int(delivery.user_id))
        replier = Replier(self.bot, self.tg, target)
        try:
            await replier.feed(delivery.event)
        except Exception:
            log.exception("delivery to chat %s failed", chat_id)
