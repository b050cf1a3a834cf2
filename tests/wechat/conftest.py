"""Fixtures for the WeChat front end: a fake WeChat API, a bot endpoint on loopback, and a
client that plays WeChat's server."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.wechat import PassiveTiming, WeChatFrontEnd, install
from bot.settings import Settings
from bot.store import open_store
from bot.store.base import Store
from fakes.core import FakeCore
from fakes.wechat_api import FakeWeChat
from fakes.wechat_client import WeChatServer

TOKEN = "wechat-test-token"
APPID = "wxfake"
# Short WeChat clock for tests: the client gives up after CLIENT_TIMEOUT, as WeChat after 5 s.
TIMING = PassiveTiming(window=0.8, hold=1.6, tries=3, fetch_wait=0.8)
CLIENT_TIMEOUT = 1.3


def new_aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


def wechat_settings(api_base: str, *, mode: str, aes_key: str = "", **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "wechat_token": TOKEN,
        "wechat_appid": APPID,
        "wechat_secret": "fakesecret",
        "wechat_aes_key": aes_key,
        "wechat_mode": mode,
        "wechat_api_base": api_base,
        "redis_url": "",
    }
    values.update(kw)
    return Settings(_env_file=None, **values)


@dataclass
class Bot:
    """One running endpoint (one bot process) and a WeChat server talking to it."""

    front: WeChatFrontEnd
    wechat: WeChatServer
    runner: web.AppRunner

    async def close(self) -> None:
        await self.front.stop(grace=1.0)
        await self.runner.cleanup()


@pytest.fixture
async def fake_wechat() -> AsyncIterator[FakeWeChat]:
    fake = await FakeWeChat().start()
    yield fake
    await fake.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def kv(sqlite_url: str) -> AsyncIterator[Store]:
    store = await open_store(sqlite_url)
    yield store
    await store.close()


StartBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def start_bot(
    fake_wechat: FakeWeChat, session: aiohttp.ClientSession
) -> AsyncIterator[StartBot]:
    """Start an endpoint for `core` (a new one per call: a second call is a restart)."""
    bots: list[Bot] = []

    async def start(core: Any, *, mode: str, aes_key: str = "", **kw: Any) -> Bot:
        settings = wechat_settings(fake_wechat.url, mode=mode, aes_key=aes_key, **kw)
        app = web.Application()
        front = install(core, settings, app)
        assert front is not None
        front.timing = TIMING
        await front.start()
        runner = web.AppRunner(app, handler_cancellation=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}{settings.wechat_path}"
        server = WeChatServer(url, TOKEN, aes_key=aes_key, appid=APPID, session=session)
        bot = Bot(front, server, runner)
        bots.append(bot)
        return bot

    yield start
    for bot in bots:
        await bot.close()


@pytest.fixture
def fake_core(kv: Store, fake_wechat: FakeWeChat) -> FakeCore:
    return FakeCore(kv, image_url=f"{fake_wechat.url}/img/cat.png")
