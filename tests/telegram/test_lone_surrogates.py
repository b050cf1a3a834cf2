"""Half an emoji from Telegram: a lone "\\ud83d" escape in an update's JSON, through the real
front end and core to the simulated OpenAI and back, answered and billed once."""

from __future__ import annotations

import json

from fakes import telegram_updates as u
from tests.telegram.conftest import available, fund


async def test_a_lone_surrogate_from_telegram_is_answered(real, fake_api, simulator) -> None:
    fe = real
    await fund(fe.core, u.ALICE, 100)
    before = await available(fe.core, u.ALICE)
    # As the webhook or getUpdates decodes it: JSON text with an escape that has no partner.
    raw = json.dumps(u.message("half an emoji: \ufffd [[tokens:20]]")).replace("\\ufffd", "\\ud83d")
    update = json.loads(raw)
    assert "\ud83d" in update["message"]["text"]
    await fe.dp.feed_raw_update(fe.bot, update)
    [reply] = fake_api.texts(u.ALICE)
    assert reply and "went wrong" not in reply
    _, body = simulator.requests[-1]
    assert body["messages"][-1]["content"] == "half an emoji: \ufffd [[tokens:20]]"
    assert 0 < before - await available(fe.core, u.ALICE) < 10_000
