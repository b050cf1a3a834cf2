"""An admin on WeChat who grants more than an account can hold is told so, in Chinese, not
"Something went wrong"; nothing is credited."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.assemble import assemble
from bot.core import Core
from bot.providers.openai import OpenAIClient
from bot.settings import Settings
from fakes.wechat_client import next_msg_id, text_xml
from simulator import Simulator, start_simulator
from tests.wechat.conftest import StartBot


@pytest.fixture
async def core(sqlite_url: str) -> AsyncIterator[Core]:
    sim: Simulator = await start_simulator()
    settings = Settings(
        _env_file=None,
        wallet_url=sqlite_url,
        openai_base_url=sim.openai_url,
        openai_api_key="sk-test",
        admin_ids=["wechat:o-admin"],
        sweep_interval_seconds=3600,
    )
    openai = OpenAIClient(sim.openai_url, "sk-test", max_retries=1)
    core = await assemble(settings, openai=openai)
    await core.start()
    yield core
    await core.close()
    await openai.close()
    await sim.close()


async def test_a_huge_grant_on_wechat_is_refused_in_chinese(
    start_bot: StartBot, core: Core
) -> None:
    bot = await start_bot(core, mode="passive")
    grant = "/grant wechat:o-user 1" + "0" * 30
    reply = await bot.wechat.post(text_xml("o-admin", grant, next_msg_id()))
    assert reply is not None and reply.content
    assert "每个账户最多持有" in reply.content and "未发放任何积分" in reply.content
    assert "出错" not in reply.content
    assert (await core.wallet.balance("wechat:o-user")).total == 0
    reply = await bot.wechat.post(text_xml("o-admin", "/grant wechat:o-user 5", next_msg_id()))
    assert reply is not None and "5" in (reply.content or "")
    assert (await core.wallet.balance("wechat:o-user")).total == 5_000
