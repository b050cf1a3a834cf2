"""A message with a picture: the user is told pictures are not read; nothing is sent or charged."""

from __future__ import annotations

from bot.core import Core
from bot.events import FinalText, Notice
from simulator import Simulator
from tests.core.conftest import ask, fund, message, of_type

ACCOUNT = "telegram:u1"


async def _no_money_moved(core: Core) -> None:
    entries = await core.wallet.entries(ACCOUNT, limit=50)
    assert [e.kind for e in entries] == ["credit"]  # the funding only: no hold captured
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (100_000, 0)
    assert await core.wallet.open_holds() == []


async def test_a_captioned_picture_gets_the_notice_and_costs_nothing(
    core: Core, sim: Simulator
) -> None:
    await fund(core, ACCOUNT, 100)
    events = await ask(core, "what is in this photo?", images=("file-1",))
    [notice] = of_type(events, Notice)
    assert "can't see pictures" in notice.text
    assert of_type(events, FinalText) == []
    assert not [path for path, _ in sim.requests if "chat/completions" in path]
    await _no_money_moved(core)
    # The user's next text message is answered as usual (no lease was left behind).
    events = await ask(core, "hello")
    assert of_type(events, FinalText)


async def test_a_picture_alone_and_a_command_with_one_get_the_notice_in_their_language(
    core: Core,
) -> None:
    await fund(core, ACCOUNT, 100)
    events = await ask(core, "", images=("file-2",), language="zh-hans")
    assert [n.text for n in of_type(events, Notice)] == [
        "暂不支持识别图片，这张图片没有发给 AI，也没有扣费。请用文字描述或提问。"
    ]
    events = await ask(core, "/imagine a fox", images=("file-3",))
    assert ["can't see pictures" in n.text for n in of_type(events, Notice)] == [True]
    await _no_money_moved(core)


async def test_a_redelivered_picture_is_answered_once(core: Core) -> None:
    msg = message("look", images=("file-4",))
    first = [e async for e in core.handle(msg)]
    again = [e async for e in core.handle(msg)]
    assert len(of_type(first, Notice)) == 1
    assert again == []
