"""The WeChat front end on the real Core, the simulated OpenAI/midjourney-proxy upstream and a
SQLite wallet: what WeChat users see, and what the ledger says they paid."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from billing.tokens import encoding_for
from billing.wallet.base import CAPTURE, CREDIT, Entry
from bot.assemble import assemble
from bot.core import Core
from bot.providers.midjourney import MidjourneyClient
from bot.providers.openai import OpenAIClient
from bot.settings import Settings
from fakes.wechat_api import FakeWeChat
from fakes.wechat_client import event_xml, image_xml, next_msg_id, text_xml, wait_for
from simulator import Simulator, start_simulator
from tests.wechat.conftest import CLIENT_TIMEOUT, StartBot, new_aes_key

_keys = itertools.count(1)
SLOW = 2.0  # "[[fault:slow]]": the simulated model pauses this long after its first words


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = await start_simulator(mj_duration=0.3, slow_seconds=SLOW)
    yield simulator
    await simulator.close()


MakeCore = Callable[[], Awaitable[Core]]


@pytest.fixture
async def make_core(sim: Simulator, sqlite_url: str) -> AsyncIterator[MakeCore]:
    """Cores over one SQLite file (a second one is the same bot after a restart)."""
    made: list[tuple[Core, list[Any]]] = []

    async def make() -> Core:
        settings = Settings(
            _env_file=None,
            wallet_url=sqlite_url,
            openai_base_url=sim.openai_url,
            openai_api_key="sk-test",
            mj_base_url=sim.url,
            mj_poll_min_seconds=0.02,
            mj_poll_max_seconds=0.05,
            sweep_interval_seconds=3600,
        )
        openai = OpenAIClient(sim.openai_url, "sk-test", max_retries=1)
        mj = MidjourneyClient(sim.url, "")
        core = await assemble(settings, openai=openai, mj=mj)
        await core.start()
        encoding_for(settings.default_model)  # load the tokenizer before the clock matters
        made.append((core, [openai, mj]))
        return core

    yield make
    for core, clients in reversed(made):
        await core.close()
        for client in clients:
            await client.close()


async def fund(core: Core, openid: str, credits: int = 100) -> str:
    account = await core.account_of("wechat", openid)
    await core.wallet.credit(account, credits * 1000, f"fund:{next(_keys)}", "test funds")
    return account


async def captures(core: Core, account: str) -> list[Entry]:
    return [e for e in await core.wallet.entries(account, limit=500) if e.kind == CAPTURE]


@pytest.mark.slow
async def test_three_tries_while_slow_one_answer_one_charge_in_safe_mode(
    start_bot: StartBot, make_core: MakeCore
) -> None:
    core = await make_core()
    account = await fund(core, "o-e2e-slow")
    bot = await start_bot(core, mode="passive", aes_key=new_aes_key())
    xml = text_xml("o-e2e-slow", "tell me a story [[fault:slow]]", next_msg_id())
    tries = await bot.wechat.deliver(xml, give_up_after=CLIENT_TIMEOUT)
    assert len(tries) >= 2 and tries[0] is None  # slow: WeChat had to retry
    last = tries[-1]
    assert last is not None and last.content
    answer = last.content
    if "reply 1" in answer:  # a very busy machine: the answer missed the last try too
        await wait_for(lambda: bot.front.outbox.load("o-e2e-slow"), 10.0)
        fetched = await bot.wechat.post(text_xml("o-e2e-slow", "1", next_msg_id()))
        assert fetched is not None and fetched.content
        answer = fetched.content
    else:
        xml_answer = answer
    [charge] = await captures(core, account)
    assert charge.amount < 0 and charge.meta["completion_tokens"] > 0
    # WeChat (or anyone) replaying the MsgId later: the same answer, no second charge.
    again = await bot.wechat.post(xml)
    assert again is not None and again.content
    if "reply 1" not in last.content:
        assert again.content == xml_answer
    assert len(await captures(core, account)) == 1


@pytest.mark.slow
async def test_passive_fetch_with_1_charges_once(
    start_bot: StartBot, make_core: MakeCore, sim: Simulator
) -> None:
    core = await make_core()
    account = await fund(core, "o-e2e-fetch")
    bot = await start_bot(core, mode="passive")
    sim.slow_seconds = SLOW + 2.0  # longer than all three tries
    tries = await bot.wechat.deliver(
        text_xml("o-e2e-fetch", "explain [[fault:slow]]", next_msg_id()),
        give_up_after=CLIENT_TIMEOUT,
    )
    assert tries[:2] == [None, None] and "reply 1" in (tries[2].content or "")  # type: ignore[union-attr]
    await wait_for(lambda: bot.front.outbox.load("o-e2e-fetch"), 10.0)

    async def done() -> bool:
        return not await bot.front.busy.active("o-e2e-fetch")

    await wait_for(done)  # the work has finished, so no "reply 1 for more" below
    fetched = await bot.wechat.post(text_xml("o-e2e-fetch", "1", next_msg_id()))
    assert fetched is not None and fetched.content and "reply 1" not in fetched.content
    assert len(await captures(core, account)) == 1


async def test_bad_signature_charges_nothing(
    start_bot: StartBot, make_core: MakeCore, sim: Simulator
) -> None:
    core = await make_core()
    account = await fund(core, "o-e2e-forged")
    bot = await start_bot(core, mode="passive")
    reply = await bot.wechat.post(text_xml("o-e2e-forged", "hi", next_msg_id()), bad_signature=True)
    assert reply is not None and reply.status == 403
    assert await captures(core, account) == []
    assert sim.requests == []  # the model was never asked


@pytest.mark.parametrize("errcode", [45015, 45047])
async def test_refused_delivery_is_kept_and_charged_once(
    start_bot: StartBot, make_core: MakeCore, fake_wechat: FakeWeChat, errcode: int
) -> None:
    core = await make_core()
    account = await fund(core, "o-e2e-cs")
    bot = await start_bot(core, mode="customer_service")
    fake_wechat.fail_sends(errcode)
    await bot.wechat.post(text_xml("o-e2e-cs", "first question", next_msg_id()))
    await wait_for(lambda: fake_wechat.refused, 10.0)
    await wait_for(lambda: bot.front.outbox.load("o-e2e-cs"), 10.0)
    assert fake_wechat.texts_to("o-e2e-cs") == []
    await bot.wechat.post(text_xml("o-e2e-cs", "second question", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.texts_to("o-e2e-cs")) == 2, 10.0)
    first, second = fake_wechat.texts_to("o-e2e-cs")
    assert first == fake_wechat.refused[0]["text"]["content"]  # the kept reply, unchanged
    assert second != first
    assert len(await captures(core, account)) == 2


async def test_restart_delivers_the_pending_rest(start_bot: StartBot, make_core: MakeCore) -> None:
    core = await make_core()
    account = await fund(core, "o-e2e-restart", 1000)
    first = await start_bot(core, mode="passive")
    reply = await first.wechat.post(
        text_xml("o-e2e-restart", "a long one [[tokens:1500]]", next_msg_id())
    )
    assert reply is not None and "reply 1" in (reply.content or "")
    await first.close()
    await core.close()

    core2 = await make_core()  # the same SQLite file: a restarted bot
    second = await start_bot(core2, mode="passive")
    more = await second.wechat.post(text_xml("o-e2e-restart", "1", next_msg_id()))
    assert more is not None and more.content and len(more.content.encode()) <= 2048
    assert more.content != reply.content
    assert len(await captures(core2, account)) == 1


async def test_imagine_and_upscale_billed_like_telegram(
    start_bot: StartBot, make_core: MakeCore, fake_wechat: FakeWeChat
) -> None:
    core = await make_core()
    account = await fund(core, "o-e2e-mj", 10_000)  # an image is 2,000 credits
    bot = await start_bot(core, mode="customer_service")
    await bot.wechat.post(text_xml("o-e2e-mj", "画 a red fox", next_msg_id()))
    await wait_for(lambda: fake_wechat.images_to("o-e2e-mj"), 10.0)
    await wait_for(lambda: any("U1" in t for t in fake_wechat.texts_to("o-e2e-mj")), 10.0)
    await bot.wechat.post(text_xml("o-e2e-mj", "U2", next_msg_id()))
    await wait_for(lambda: len(fake_wechat.images_to("o-e2e-mj")) == 2, 10.0)
    charges = await captures(core, account)
    assert sorted(c.meta["action"] for c in charges) == ["IMAGINE", "U2"]
    assert all(c.meta["model"] == "midjourney" for c in charges)


async def test_subscribe_grants_the_trial_once(start_bot: StartBot, make_core: MakeCore) -> None:
    core = await make_core()
    bot = await start_bot(core, mode="passive", wechat_trial_credits=20)
    for t in (1700000000, 1700000500):
        reply = await bot.wechat.post(event_xml("o-e2e-new", "subscribe", t))
        assert reply is not None and "Welcome" in (reply.content or "")
    account = await core.account_of("wechat", "o-e2e-new")
    grants = [e for e in await core.wallet.entries(account) if e.kind == CREDIT]
    assert [g.amount for g in grants] == [20_000]


async def test_a_picture_gets_the_notice_in_chinese_and_costs_nothing(
    start_bot: StartBot, make_core: MakeCore
) -> None:
    core = await make_core()
    account = await fund(core, "o-e2e-pic")
    bot = await start_bot(core, mode="passive")
    reply = await bot.wechat.post(image_xml("o-e2e-pic", next_msg_id()))
    assert reply is not None and reply.content
    assert reply.content.startswith("暂不支持识别图片")
    assert [e.kind for e in await core.wallet.entries(account, limit=50)] == [CREDIT]
    assert (await core.wallet.balance(account)).held == 0
