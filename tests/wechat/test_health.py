"""Whether the WeChat API can be reached and takes our credentials, for /healthz."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from adapters.wechat import install
from adapters.wechat.api import WeChatApi, WeChatApiError
from bot.store import open_store
from bot.store.base import Store
from fakes.core import FakeCore
from fakes.wechat_api import FakeWeChat
from tests.wechat.conftest import wechat_settings


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until `condition()` holds; fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if condition():
            return
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[Store]:
    kv = await open_store(sqlite_url)
    yield kv
    await kv.close()


async def test_the_status_follows_the_api_calls(fake_wechat: FakeWeChat, store: Store) -> None:
    api = WeChatApi(fake_wechat.url, fake_wechat.appid, "wrong-secret", store)
    try:
        assert api.status.ok and api.status.detail == "no API call yet"
        with pytest.raises(WeChatApiError):
            await api.access_token()
        assert not api.status.ok
        assert api.status.detail == "access_token refused (errcode 40013)"
        api.secret = fake_wechat.secret
        await api.send_text("o-1", "hello")
        assert api.status.ok
        fake_wechat.fail_sends(45015)  # one user out of the 48-hour window: WeChat is fine
        with pytest.raises(WeChatApiError):
            await api.send_text("o-2", "hello")
        assert api.status.ok
    finally:
        await api.close()


async def test_an_unreachable_api_is_down(store: Store) -> None:
    api = WeChatApi("http://127.0.0.1:9", "wxapp", "secret", store)
    try:
        with pytest.raises(WeChatApiError):
            await api.access_token()
        assert not api.status.ok and api.status.detail == "WeChat API unreachable"
    finally:
        await api.close()


async def test_creditbot_run_checks_the_credentials_at_start(
    fake_wechat: FakeWeChat, store: Store
) -> None:
    """A wrong WECHAT_SECRET shows on /healthz at start, not when a user first writes."""
    settings = wechat_settings(fake_wechat.url, mode="passive", wechat_secret="wrong-secret")
    front = install(FakeCore(store), settings, web.Application())
    assert front is not None and front.status.name == "wechat"
    await front.start()
    try:
        await until(lambda: not front.status.ok)
        assert front.status.detail == "access_token refused (errcode 40013)"
    finally:
        await front.stop()
