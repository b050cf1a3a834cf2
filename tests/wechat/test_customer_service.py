"""Customer-service mode: "success" at once, replies through the customer-service API, and
nothing lost when WeChat refuses to deliver (45015, 45047)."""

from __future__ import annotations

import pytest

from bot.events import Delivery, ImageResult
from bot.store import open_store
from fakes.core import FakeCore
from fakes.wechat_api import FakeWeChat
from fakes.wechat_client import next_msg_id, text_xml, wait_for
from tests.wechat.conftest import StartBot


async def test_answer_goes_out_once_however_many_tries(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    bot = await start_bot(fake_core, mode="customer_service")
    xml = text_xml("o-cs", "你好", next_msg_id())
    for _ in range(3):
        reply = await bot.wechat.post(xml)
        assert reply is not None and reply.body == "success"
    await wait_for(lambda: fake_wechat.texts_to("o-cs"))
    await bot.front.stop()  # let every background job finish
    assert fake_wechat.texts_to("o-cs") == ["echo: 你好"]
    assert fake_core.charges["o-cs"] == 1


async def test_long_reply_goes_out_in_pieces(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    bot = await start_bot(fake_core, mode="customer_service")
    await bot.wechat.post(text_xml("o-long", "[[long]]", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.texts_to("o-long")) == 3)
    parts = fake_wechat.texts_to("o-long")
    assert all(len(p.encode()) <= 2048 for p in parts)
    assert "".join(parts) == "长" * 1500


@pytest.mark.parametrize("errcode", [45015, 45047])
async def test_refused_reply_is_kept_for_the_next_message(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat, errcode: int
) -> None:
    bot = await start_bot(fake_core, mode="customer_service")
    fake_wechat.fail_sends(errcode)
    await bot.wechat.post(text_xml("o-quiet", "first", next_msg_id()))
    await wait_for(lambda: bot.front.outbox.load("o-quiet"))
    assert fake_wechat.texts_to("o-quiet") == []
    await bot.wechat.post(text_xml("o-quiet", "second", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.texts_to("o-quiet")) == 2)
    assert fake_wechat.texts_to("o-quiet") == ["echo: first", "echo: second"]
    assert fake_core.charges["o-quiet"] == 2


async def test_1_fetches_what_was_kept_without_asking_the_model(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    bot = await start_bot(fake_core, mode="customer_service")
    fake_wechat.fail_sends(45015)
    await bot.wechat.post(text_xml("o-one", "question", next_msg_id()))
    await wait_for(lambda: bot.front.outbox.load("o-one"))
    await bot.wechat.post(text_xml("o-one", "1", next_msg_id()))
    await wait_for(lambda: fake_wechat.texts_to("o-one"))
    await bot.front.stop()
    assert fake_wechat.texts_to("o-one") == ["echo: question"]
    assert fake_core.handled == ["question"]


async def test_restart_with_a_kept_reply(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    first = await start_bot(fake_core, mode="customer_service")
    fake_wechat.fail_sends(45047)
    await first.wechat.post(text_xml("o-rs", "before restart", next_msg_id()))
    await wait_for(lambda: first.front.outbox.load("o-rs"))
    await first.close()

    second = await start_bot(fake_core, mode="customer_service")
    await second.wechat.post(text_xml("o-rs", "after restart", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.texts_to("o-rs")) == 2)
    assert fake_wechat.texts_to("o-rs") == ["echo: before restart", "echo: after restart"]


async def test_imagine_sends_one_progress_then_the_image_and_takes_actions(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    bot = await start_bot(fake_core, mode="customer_service")
    await bot.wechat.post(text_xml("o-img", "/imagine a cat", next_msg_id()))
    await wait_for(lambda: fake_wechat.images_to("o-img"))
    await wait_for(lambda: len(fake_wechat.texts_to("o-img")) == 2)
    texts = fake_wechat.texts_to("o-img")
    assert "Drawing" in texts[0]  # one progress notice, not one per percent
    assert "a cat" in texts[1] and "U1" in texts[1]
    assert fake_wechat.uploads[0]["type"] == "image" and fake_wechat.uploads[0]["size"] > 0
    await bot.wechat.post(text_xml("o-img", "V2", next_msg_id()))  # not offered: refused
    await bot.wechat.post(text_xml("o-img", "U3", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.images_to("o-img")) == 2)
    assert fake_core.pressed == ["mj:task-1:U3"]
    assert any("V2" in t for t in fake_wechat.texts_to("o-img"))


async def test_action_without_an_image_is_explained(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    bot = await start_bot(fake_core, mode="customer_service")
    await bot.wechat.post(text_xml("o-noimg", "U1", next_msg_id()))
    await wait_for(lambda: fake_wechat.texts_to("o-noimg"))
    assert "No image" in fake_wechat.texts_to("o-noimg")[0]
    assert fake_core.pressed == [] and fake_core.charges["o-noimg"] == 0


async def test_late_delivery_from_the_core_goes_out(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    """An image that finished after a restart reaches the user through customer service."""
    await start_bot(fake_core, mode="customer_service")
    event = ImageResult("t7", fake_core.image_url, "resumed")
    await fake_core.sinks["wechat"](Delivery("wechat", "o-late", "o-late", event))
    assert len(fake_wechat.images_to("o-late")) == 1
    assert fake_wechat.texts_to("o-late") == ["resumed"]


async def test_stale_access_token_is_refreshed_once(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat
) -> None:
    bot = await start_bot(fake_core, mode="customer_service")
    await bot.wechat.post(text_xml("o-tok", "a", next_msg_id()))
    await wait_for(lambda: fake_wechat.texts_to("o-tok"))
    fake_wechat.expire_tokens()  # WeChat invalidated it (another fetch elsewhere)
    await bot.wechat.post(text_xml("o-tok", "b", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.texts_to("o-tok")) == 2)
    assert fake_wechat.token_fetches == 2


async def test_with_redis_url_kept_replies_and_token_live_in_redis(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat, redis_url: str
) -> None:
    """REDIS_URL: WeChat's shared state (dedupe, kept replies, access_token) goes to Redis,
    so every process behind the same Redis sees it."""
    bot = await start_bot(fake_core, mode="customer_service", redis_url=redis_url)
    fake_wechat.fail_sends(45015)
    await bot.wechat.post(text_xml("o-redis", "kept", next_msg_id()))
    await wait_for(lambda: bot.front.outbox.load("o-redis"))
    shared = await open_store(redis_url)
    try:
        assert await shared.get("wx:outbox:o-redis")
        assert await shared.get(f"wx:token:{fake_wechat.appid}")
        assert await fake_core.kv.get("wx:outbox:o-redis") is None
    finally:
        await shared.close()
    await bot.wechat.post(text_xml("o-redis", "next", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.texts_to("o-redis")) == 2)
    assert fake_wechat.texts_to("o-redis") == ["echo: kept", "echo: next"]
