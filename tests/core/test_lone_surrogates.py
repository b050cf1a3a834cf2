"""A lone surrogate in a message (half an emoji from a JSON "\\ud83d" escape) is replaced by
U+FFFD where text enters the core, so the OpenAI client, the stores and the logs never meet a
string UTF-8 cannot encode."""

from __future__ import annotations

import json

from bot.core import Core
from bot.events import FinalText, Message, clean_text
from simulator import Simulator
from tests.core.conftest import ask, captures, fund, of_type

ACCOUNT = "telegram:u1"
HALF_EMOJI = json.loads('"\\ud83d"')  # what a JSON decoder makes of a lone escape


def test_clean_text_replaces_only_what_cannot_be_encoded() -> None:
    assert clean_text("plain 你好 😀") == "plain 你好 😀"
    assert clean_text(f"a{HALF_EMOJI}b") == "a\ufffdb"
    assert clean_text("\udfff") == "\ufffd"
    assert clean_text("\ud83d\ude00!") == "😀!"  # a pair split in two code points: joined
    text = "unchanged"
    assert clean_text(text) is text  # the common case costs no copy


def test_a_message_carries_only_encodable_text() -> None:
    msg = Message("telegram", "1", "1", "m1", f"hi {HALF_EMOJI}", user_name=f"Ann{HALF_EMOJI}")
    assert (msg.text, msg.user_name) == ("hi \ufffd", "Ann\ufffd")
    msg.text.encode("utf-8")


async def test_a_lone_surrogate_is_answered_and_billed(core: Core, sim: Simulator) -> None:
    await fund(core, ACCOUNT, 10)
    events = await ask(core, f"what is {HALF_EMOJI} [[tokens:5]]", user_name=f"Bo{HALF_EMOJI}")
    assert of_type(events, FinalText), events
    assert len(await captures(core, ACCOUNT)) == 1
    path, body = sim.requests[-1]
    assert path.endswith("/chat/completions")
    assert body["messages"][-1]["content"] == "what is \ufffd [[tokens:5]]"
    # The history keeps the cleaned text: the next turn sends it again without failing.
    events = await ask(core, "and then? [[tokens:5]]")
    assert of_type(events, FinalText)
    _, body = sim.requests[-1]
    assert "what is \ufffd [[tokens:5]]" in [m["content"] for m in body["messages"]]
    assert len(await captures(core, ACCOUNT)) == 2


async def test_a_lone_surrogate_in_a_command_or_press_is_harmless(core: Core) -> None:
    [answer] = await ask(core, f"/model gpt{HALF_EMOJI}")
    assert "gpt\ufffd" in answer.text
    pressed = [
        e
        async for e in core.press(
            "telegram", "u1", "u1", f"mj:U1:{HALF_EMOJI}", message_id="cb-1", language="en"
        )
    ]
    assert all("\ud83d" not in getattr(e, "text", "") for e in pressed)
