"""The access_token is fetched once and shared by every process through the Store."""

from __future__ import annotations

import asyncio

from adapters.wechat.api import WeChatApi
from bot.store import open_store
from fakes.wechat_api import FakeWeChat


async def test_processes_share_one_token(fake_wechat: FakeWeChat, store_url: str) -> None:
    """Ten "processes" (each its own Store connection and client) asking at once: one fetch."""
    stores = [await open_store(store_url) for _ in range(3)]
    apis = [
        WeChatApi(fake_wechat.url, fake_wechat.appid, fake_wechat.secret, stores[i % 3])
        for i in range(10)
    ]
    try:
        tokens = await asyncio.gather(*(api.access_token() for api in apis))
        assert len(set(tokens)) == 1
        assert fake_wechat.token_fetches == 1
        await asyncio.gather(*(api.send_text("o-x", f"hi {i}") for i, api in enumerate(apis)))
        assert len(fake_wechat.texts_to("o-x")) == 10
    finally:
        for api in apis:
            await api.close()
        for store in stores:
            await store.close()
