"""Passive mode: every answer rides on a callback response within WeChat's 5 seconds (here
shrunk to CLIENT_TIMEOUT), WeChat's retries of one MsgId, and "1" to fetch what waits."""

from __future__ import annotations

import pytest

from bot.events import Delivery, ImageResult
from bot.store.base import Store
from fakes.core import FakeCore
from fakes.wechat_client import next_msg_id, text_xml, wait_for
from tests.wechat.conftest import CLIENT_TIMEOUT, StartBot

FOOTER = "reply 1 for more"
WITH_FOOTER = "{}\n\n（回复 1 查看后续 / reply 1 for more）"


@pytest.mark.slow
async def test_three_tries_of_one_msgid_one_answer_one_charge(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    # Ready after WeChat's second try gave up (2 x 1.3 s), before the third one ends (+1.0 s).
    fake_core.delay = 3.0
    bot = await start_bot(fake_core, mode="passive")
    xml = text_xml("o-slow", "slow question", next_msg_id())
    tries = await bot.wechat.deliver(xml, give_up_after=CLIENT_TIMEOUT)
    assert [t is None for t in tries] == [True, True, False]
    assert tries[2] is not None and tries[2].content == "echo: slow question"
    assert fake_core.handled == ["slow question"]
    assert fake_core.charges["o-slow"] == 1
    # A late duplicate (WeChat or a proxy replaying) gets the same answer and no new charge.
    again = await bot.wechat.post(xml, give_up_after=CLIENT_TIMEOUT)
    assert again is not None and again.content == "echo: slow question"
    assert fake_core.charges["o-slow"] == 1


@pytest.mark.slow
async def test_not_ready_after_three_tries_then_fetch_with_1(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    # Not ready when the third try ends (2 x 1.3 + 1.0 s) nor when "1" has waited (+0.8 s).
    fake_core.delay = 5.2
    bot = await start_bot(fake_core, mode="passive")
    tries = await bot.wechat.deliver(
        text_xml("o-wait", "hard question", next_msg_id()), give_up_after=CLIENT_TIMEOUT
    )
    assert tries[:2] == [None, None]
    notice = tries[2]
    assert notice is not None and notice.content is not None
    assert "回复 1" in notice.content and "reply 1" in notice.content
    # Too early: told to come back, nothing is lost.
    early = await bot.wechat.post(text_xml("o-wait", "1", next_msg_id()))
    assert early is not None and early.content is not None and "not ready" in early.content
    await wait_for(lambda: bot.front.outbox.load("o-wait"), 5.0)

    async def done() -> bool:
        return not await bot.front.busy.active("o-wait")

    await wait_for(done)  # the work has finished, so no "reply 1 for more" below
    fetched = await bot.wechat.post(text_xml("o-wait", "1", next_msg_id()))
    assert fetched is not None and fetched.content == "echo: hard question"
    assert fake_core.charges["o-wait"] == 1
    # Nothing waits any more: "1" is an ordinary message again.
    fake_core.delay = 0
    plain = await bot.wechat.post(text_xml("o-wait", "1", next_msg_id()))
    assert plain is not None and plain.content == "echo: 1"


@pytest.mark.slow
async def test_a_new_question_while_one_is_pending_is_not_lost(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive")
    user = "o-busy"
    q1 = await bot.wechat.deliver(
        text_xml(user, "first [[wait]]", next_msg_id()), give_up_after=CLIENT_TIMEOUT
    )
    assert q1[-1] is not None and "reply 1" in (q1[-1].content or "")
    q2 = await bot.wechat.deliver(
        text_xml(user, "second", next_msg_id()), give_up_after=CLIENT_TIMEOUT
    )
    assert q2[-1] is not None and "reply 1" in (q2[-1].content or "")
    fake_core.release.set()

    async def both_waiting() -> bool:
        return len(await bot.front.outbox.load(user)) == 2

    await wait_for(both_waiting)
    one = await bot.wechat.post(text_xml(user, "1", next_msg_id()))
    two = await bot.wechat.post(text_xml(user, "1", next_msg_id()))
    assert one is not None and one.content == WITH_FOOTER.format("echo: first [[wait]]")
    assert two is not None and two.content == "echo: second"
    assert fake_core.charges[user] == 2


async def test_a_new_question_is_answered_while_an_old_answer_waits(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive")
    user = "o-mixed"
    first = await bot.wechat.post(text_xml(user, "[[long]]", next_msg_id()))
    assert first is not None and FOOTER in (first.content or "")
    second = await bot.wechat.post(text_xml(user, "short one", next_msg_id()))
    assert second is not None and second.content == WITH_FOOTER.format("echo: short one")


async def test_long_reply_is_split_and_continued_with_1(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive")
    user = "o-long"
    replies = [await bot.wechat.post(text_xml(user, "[[long]]", next_msg_id()))]
    for _ in range(2):
        replies.append(await bot.wechat.post(text_xml(user, "1", next_msg_id())))
    parts = [r.content or "" if r else "" for r in replies]
    assert all(len(p.encode()) <= 2048 for p in parts)
    assert all(FOOTER in p for p in parts[:-1]) and FOOTER not in parts[-1]
    body = "".join(p.split("\n\n（")[0] for p in parts)
    assert body == "长" * 1500
    assert fake_core.charges[user] == 1


async def test_restart_with_a_reply_pending(start_bot: StartBot, fake_core: FakeCore) -> None:
    """The rest of an answer survives a restart: a new process over the same Store hands it
    out."""
    first = await start_bot(fake_core, mode="passive")
    user = "o-restart"
    reply = await first.wechat.post(text_xml(user, "[[long]]", next_msg_id()))
    assert reply is not None and FOOTER in (reply.content or "")
    await first.close()

    second = await start_bot(fake_core, mode="passive")
    more = await second.wechat.post(text_xml(user, "1", next_msg_id()))
    assert more is not None and (more.content or "").startswith("长")
    assert fake_core.charges[user] == 1


async def test_imagine_progress_then_image_then_actions(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive")
    user = "o-artist"
    progress = await bot.wechat.post(text_xml(user, "画 一只猫", next_msg_id()))
    assert progress is not None and "Drawing" in (progress.content or "")
    assert fake_core.handled == ["/imagine 一只猫"]
    await wait_for(lambda: bot.front.outbox.load(user))
    image = await bot.wechat.post(text_xml(user, "1", next_msg_id()))
    assert image is not None and image.fields is not None
    assert image.fields["MsgType"] == "image" and image.fields["Image"]["MediaId"]
    caption = await bot.wechat.post(text_xml(user, "1", next_msg_id()))
    assert caption is not None and "U1" in (caption.content or "")
    upscale = await bot.wechat.post(text_xml(user, "u1", next_msg_id()))
    assert upscale is not None and upscale.fields is not None
    assert upscale.fields["MsgType"] == "image"
    await bot.wechat.post(text_xml(user, "重绘", next_msg_id()))
    assert fake_core.pressed == ["mj:task-1:U1", "mj:task-1:REROLL"]


async def test_late_image_after_restart_waits_for_1(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive")
    sink = fake_core.sinks["wechat"]
    await sink(Delivery("wechat", "o-late", "o-late", ImageResult("t9", fake_core.image_url, "")))
    image = await bot.wechat.post(text_xml("o-late", "1", next_msg_id()))
    assert image is not None and image.fields is not None and image.fields["MsgType"] == "image"


@pytest.mark.slow
async def test_retries_reaching_another_process_get_the_same_answer(
    start_bot: StartBot, fake_core: FakeCore, kv: Store
) -> None:
    """Behind a load balancer WeChat's retry may reach another bot process: that process
    finds the work started, waits for its answer through the Store, and starts nothing."""
    other_core = FakeCore(kv, image_url=fake_core.image_url)
    fake_core.delay = 2.0  # answered during the second try, which goes to the other process
    first = await start_bot(fake_core, mode="passive")
    second = await start_bot(other_core, mode="passive")
    xml = text_xml("o-lb", "balanced", next_msg_id())
    assert await first.wechat.post(xml, give_up_after=CLIENT_TIMEOUT) is None
    reply = await second.wechat.post(xml, give_up_after=CLIENT_TIMEOUT * 2)
    assert reply is not None and reply.content == "echo: balanced"
    assert fake_core.charges["o-lb"] + other_core.charges["o-lb"] == 1
    assert other_core.handled == []
