"""An unreachable Telegram is retried, logged and reported down, never silently given up on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError
from aiohttp import web

from adapters.telegram.context import TelegramContext
from adapters.telegram.frontend import ERROR_AFTER, TelegramFrontEnd, admin_ids
from adapters.telegram.stars import parse_packs
from bot.events import FinalText
from fakes import telegram_updates as u
from fakes.telegram_api import TOKEN, FakeBotAPI
from tests.telegram.conftest import FakeCore, make_settings

UNREACHABLE = "http://api.telegram.invalid"  # .invalid never resolves (RFC 6761)
LOGGER = "adapters.telegram.frontend"


def frontend(  # type: ignore[no-untyped-def]
    core: Any, api_base: str, sqlite_url: str, *, timeout: float = 5.0, **kw: Any
):
    """A front end on `api_base` that retries fast (the delays of production, shrunk)."""

    class Base:
        url = api_base

    settings = make_settings(Base(), sqlite_url, **kw)  # type: ignore[arg-type]
    server = TelegramAPIServer.from_base(api_base)
    bot = Bot(TOKEN, session=AiohttpSession(api=server, timeout=timeout))
    tg = TelegramContext(
        http=httpx.AsyncClient(timeout=5.0),
        packs=parse_packs(settings.telegram_stars_packs),
        admin_ids=admin_ids(settings),
    )
    fe = TelegramFrontEnd(core, settings, web.Application(), bot=bot, tg=tg)
    fe.retry_base, fe.retry_max = 0.01, 0.05
    return fe


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until `condition()` holds; fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if condition():
            return
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_unreachable_telegram_is_retried_warned_then_errors_and_reported_down(
    fake_core: FakeCore, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fe = frontend(fake_core, UNREACHABLE, sqlite_url)
    assert not fe.status.ok and fe.status.detail == "connecting"
    await fe.start()  # returns at once: the rest of the bot goes on
    try:

        def tries() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == LOGGER]

        await until(lambda: len(tries()) > ERROR_AFTER)
        assert not fe.status.ok and fe.status.detail == "Bot API unreachable"
        levels = [r.levelno for r in tries()]
        assert levels[: ERROR_AFTER - 1] == [logging.WARNING] * (ERROR_AFTER - 1)
        assert set(levels[ERROR_AFTER - 1 :]) == {logging.ERROR}
        assert "cannot connect" in tries()[0].getMessage()
        assert TOKEN.split(":")[1] not in caplog.text  # the token never reaches the log
        assert fe._supervisor is not None and not fe._supervisor.done()  # still trying
    finally:
        async with asyncio.timeout(5):
            await fe.stop()


async def test_a_refusing_api_is_down_until_it_comes_back_then_polling_answers(
    fake_api: FakeBotAPI, fake_core: FakeCore, sqlite_url: str
) -> None:
    fake_core.script["hello"] = [FinalText("hi there")]
    fake_api.outage = "refuse"
    fe = frontend(fake_core, fake_api.url, sqlite_url)
    await fe.start()
    try:
        await until(lambda: fe.status.detail == "Bot API unreachable")
        assert not fe.status.ok
        fake_api.outage = None
        fake_api.updates.append(u.message("hello"))
        await fake_api.wait_for("sendMessage")
        assert fake_api.texts() == ["hi there"]
        assert fe.status.ok and fe.status.detail == "polling"
        assert fake_api.calls_to("getMe") and fake_api.calls_to("deleteWebhook")
        await fake_api.wait_for("setMyCommands", 2)  # the menu, once connected
    finally:
        await fe.stop()


async def test_a_blackholed_api_times_out_and_is_down_until_it_answers(
    fake_api: FakeBotAPI, fake_core: FakeCore, sqlite_url: str
) -> None:
    fake_api.outage = "blackhole"
    fe = frontend(fake_core, fake_api.url, sqlite_url, timeout=0.3)
    await fe.start()
    try:
        await until(lambda: fe.status.detail == "Bot API unreachable")
        fake_api.outage = None
        await until(lambda: fe.status.ok)
        assert fe.status.detail == "polling"
    finally:
        await fe.stop()


async def test_polling_that_loses_telegram_is_down_then_up_again(
    fake_api: FakeBotAPI, fake_core: FakeCore, sqlite_url: str
) -> None:
    fake_core.script["again"] = [FinalText("back")]
    fe = frontend(fake_core, fake_api.url, sqlite_url)
    await fe.start()
    try:
        await fake_api.wait_for("getUpdates")
        assert fe.status.ok
        fake_api.outage = "refuse"  # getUpdates fails from now on (aiogram retries it)
        await until(lambda: not fe.status.ok)
        assert fe.status.detail == "Bot API unreachable"
        fake_api.outage = None
        await until(lambda: fe.status.ok)
        fake_api.updates.append(u.message("again"))
        await fake_api.wait_for("sendMessage")
        assert fake_api.texts() == ["back"]
    finally:
        await fe.stop()


async def test_webhook_registration_is_retried_until_telegram_takes_it(
    fake_api: FakeBotAPI, fake_core: FakeCore, sqlite_url: str
) -> None:
    fake_api.fail("setWebhook", times=3, status=500)
    fe = frontend(
        fake_core,
        fake_api.url,
        sqlite_url,
        telegram_webhook_url="https://bot.example.com/telegram",
        telegram_webhook_secret="s3cret",
    )
    await fe.start()
    try:
        calls = await fake_api.wait_for("setWebhook", 4)
        await until(lambda: fe.status.ok)
        assert fe.status.detail == "webhook set"
        assert len(calls) == 4 and not fake_api.calls_to("getUpdates")
    finally:
        await fe.stop()


async def test_a_revoked_token_is_reported_as_such(
    fake_api: FakeBotAPI, fake_core: FakeCore, sqlite_url: str
) -> None:
    fake_api.token = "999:other"  # every call answers 401 Unauthorized
    fe = frontend(fake_core, fake_api.url, sqlite_url)
    await fe.start()
    try:
        await until(lambda: "refused" in fe.status.detail)
        assert not fe.status.ok and fe.status.detail == "TELEGRAM_BOT_TOKEN refused (401)"
    finally:
        await fe.stop()


async def test_a_webhook_bot_that_lost_telegram_is_rechecked(
    fake_api: FakeBotAPI, fake_core: FakeCore, sqlite_url: str
) -> None:
    """No polling to show Telegram is back: while down, a health probe has getMe asked."""
    fe = frontend(
        fake_core,
        fake_api.url,
        sqlite_url,
        telegram_webhook_url="https://bot.example.com/telegram",
        telegram_webhook_secret="s3cret",
    )
    await fe.start()
    try:
        await until(lambda: fe.status.ok)
        fake_api.outage = "refuse"
        with pytest.raises(TelegramNetworkError):
            await fe.bot.send_message(1, "lost")
        assert not fe.status.ok
        fake_api.outage = None
        fe.status.refresh()  # what /healthz does on each probe
        await until(lambda: fe.status.ok)
        assert fe.status.detail == "Bot API reachable again"
    finally:
        await fe.stop()
