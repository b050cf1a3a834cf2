"""Deployment modes through `install()`: webhook with its secret, long polling, the menus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web

from adapters.telegram import install
from bot.events import FinalText
from fakes import telegram_updates as u
from tests.telegram.conftest import make_settings

SECRET = "s3cret-token_value"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def webhook(fake_api, fake_core, sqlite_url) -> AsyncIterator[tuple]:  # type: ignore[type-arg]
    settings = make_settings(
        fake_api,
        sqlite_url,
        telegram_webhook_url="https://bot.example.com/telegram",
        telegram_webhook_secret=SECRET,
    )
    app = web.Application()
    fe = install(fake_core, settings, app)
    assert fe is not None
    runner, url = await serve(app)
    await fe.start()
    async with ClientSession() as http:
        yield fe, f"{url}{settings.telegram_webhook_path}", http
    await fe.stop()
    await runner.cleanup()


def test_no_token_no_front_end(fake_api, fake_core, sqlite_url) -> None:
    settings = make_settings(fake_api, sqlite_url, telegram_bot_token="")
    assert install(fake_core, settings, web.Application()) is None


def test_a_webhook_without_a_secret_is_refused(fake_api, fake_core, sqlite_url) -> None:
    settings = make_settings(fake_api, sqlite_url, telegram_webhook_url="https://x.example/tg")
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        install(fake_core, settings, web.Application())


async def test_start_sets_the_webhook_and_the_menus_in_two_languages(webhook, fake_api) -> None:
    [hook] = await fake_api.wait_for("setWebhook")  # connecting runs in the background
    assert hook.params["url"] == "https://bot.example.com/telegram"
    assert hook.params["secret_token"] == SECRET
    allowed = hook.json("allowed_updates")
    assert {"message", "callback_query", "pre_checkout_query"} <= set(allowed)
    assert "stopped_message_generation" in allowed
    menus = await fake_api.wait_for("setMyCommands", 2)
    assert [m.params.get("language_code") for m in menus] == [None, "zh"]
    english, chinese = (m.json("commands") for m in menus)
    assert [c["command"] for c in english] == [c["command"] for c in chinese]
    assert "imagine" in [c["command"] for c in english]


async def test_a_wrong_secret_is_refused_and_nothing_is_processed(
    webhook, fake_api, fake_core
) -> None:
    _, url, http = webhook
    update = u.message("hi")
    for headers in ({"X-Telegram-Bot-Api-Secret-Token": "wrong"}, {}):
        async with http.post(url, json=update, headers=headers) as response:
            assert response.status in (401, 403)
    await asyncio.sleep(0.2)  # give a (wrongly) accepted update time to show up
    assert fake_core.seen == []
    assert not fake_api.calls_to("sendMessage")


async def test_a_webhook_update_redelivered_is_processed_once(webhook, fake_api, fake_core) -> None:
    _, url, http = webhook
    fake_core.script["hi"] = [FinalText("hello")]
    update = u.message("hi")
    for _ in range(3):
        async with http.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
        ) as response:
            assert response.status == 200
    await fake_api.wait_for("sendMessage")
    await asyncio.sleep(0.2)  # a duplicate would be answered by now
    assert fake_api.texts() == ["hello"]
    assert len(fake_core.seen) == 1


async def test_long_polling_is_the_default(fake_api, fake_core, sqlite_url) -> None:
    fake_core.script["polled"] = [FinalText("answer")]
    fe = install(fake_core, make_settings(fake_api, sqlite_url), web.Application())
    assert fe is not None
    fake_api.updates.append(u.message("polled"))
    await fe.start()
    try:
        await fake_api.wait_for("sendMessage")
    finally:
        await fe.stop()
    assert fake_api.calls_to("deleteWebhook")
    assert fake_api.texts() == ["answer"]
    assert fake_core.sink is not None  # deliveries outside a handler have somewhere to go
