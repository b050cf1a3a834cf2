"""Streamed replies as a Telegram user sees them, with the real aiogram Bot on the fake API.

The core here is scripted (FakeCore) so the model's exact words and timing are under the
test's control; the end-to-end tests with the real core are in test_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from adapters.telegram.render import render_parts
from bot.events import FinalText, Notice, TextDelta
from fakes import telegram_updates as u
from fakes.telegram_api import BOT_USERNAME
from tests.telegram.conftest import make_frontend, make_settings
from tests.telegram.html_check import check_part


def stream(text: str, pieces: int, pause: float = 0.0) -> list:
    step = max(1, len(text) // pieces)
    out: list = []
    for i in range(0, len(text), step):
        out.append(TextDelta(text[i : i + step]))
        if pause:
            out.append(pause)
    out.append(FinalText(text))
    return out


async def test_private_reply_streams_as_drafts_then_one_whole_message(
    fake_api, fake_core, sqlite_url
) -> None:
    reply = "Hello! Here is **a streamed** answer with `code` and more words. " * 3
    fake_core.script["hi"] = stream(reply, 12)
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url), draft_interval=0.0)
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("hi"))
    finally:
        await fe.stop()
    drafts = fake_api.calls_to("sendMessageDraft")
    assert len(drafts) >= 5
    assert len({d.params["draft_id"] for d in drafts}) == 1
    assert all(d.params.get("can_stop") == "true" for d in drafts)
    lengths = [len(d.params["text"]) for d in drafts]
    assert lengths == sorted(lengths)
    sends = fake_api.calls_to("sendMessage")
    assert [s.params["text"] for s in sends] == render_parts(reply)
    assert fake_api.calls.index(sends[0]) > fake_api.calls.index(drafts[-1])
    assert all(c.params.get("parse_mode") == "HTML" for c in drafts + sends)


@pytest.mark.slow
async def test_group_reply_is_edited_about_once_a_second_and_ends_whole(
    fake_api, fake_core, sqlite_url
) -> None:
    reply = " ".join(f"word{i}" for i in range(60))
    fake_core.script["/ask"] = stream(reply, 30, pause=0.08)  # ~2.4 s of deltas
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("/ask", chat_id=u.GROUP))
    finally:
        await fe.stop()
    assert not fake_api.calls_to("sendMessageDraft")  # no drafts in groups
    writes = fake_api.calls_to("sendMessage", "editMessageText", "editMessageReplyMarkup")
    first = writes[0]
    assert first.method == "sendMessage"
    assert first.json("reply_parameters")["message_id"] > 0  # answers the asker's message
    stop_button = first.json("reply_markup")["inline_keyboard"][0][0]
    assert stop_button["callback_data"].startswith("tgstop:")
    previews = writes[:-1]
    assert 2 <= len(previews) <= 4  # ~2.4 s at one per second, not one per delta
    gaps = [b.at - a.at for a, b in itertools.pairwise(previews)]
    assert all(gap >= 0.95 for gap in gaps), gaps
    [shown] = fake_api.messages.values()
    assert shown["text"] == reply
    assert not shown["reply_markup"]  # the Stop button is gone at the end


async def test_flood_control_is_waited_out_and_the_final_text_still_arrives(
    fake_api, fake_core, sqlite_url
) -> None:
    fake_core.script["hi"] = [FinalText("the whole answer")]
    fake_api.fail("sendMessage", retry_after=1)
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("hi"))
    finally:
        await fe.stop()
    first, second = fake_api.calls_to("sendMessage")
    assert second.params["text"] == "the whole answer"
    assert second.at - first.at >= 0.95  # retry_after honoured


async def test_flood_control_mid_stream_skips_previews_not_the_end(
    fake_api, fake_core, sqlite_url
) -> None:
    reply = "one two three four five six seven eight nine ten"
    fake_core.script["/ask"] = stream(reply, 10, pause=0.05)
    fake_api.fail("editMessageText", retry_after=1)
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url), edit_interval=0.0)
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("/ask", chat_id=u.GROUP))
    finally:
        await fe.stop()
    assert [m["text"] for m in fake_api.messages.values()] == [reply]


async def test_not_modified_is_ignored(fake_api, fake_core, sqlite_url) -> None:
    fake_core.script["/ask"] = [TextDelta("same"), 0.05, TextDelta(""), FinalText("same")]
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url), edit_interval=0.0)
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("/ask", chat_id=u.GROUP))
    finally:
        await fe.stop()
    assert [m["text"] for m in fake_api.messages.values()] == ["same"]
    assert "failed" not in " ".join(fake_api.texts())
    assert len(fake_api.calls_to("sendMessage")) == 1


async def test_a_long_reply_arrives_in_valid_parts_in_order(
    fake_api, fake_core, sqlite_url
) -> None:
    code = "```js\n" + "\n".join(f"if (a < {i} && b) {{ x(); }}" for i in range(250)) + "\n```"
    reply = ("**Intro** " + "lorem ipsum " * 300) + "\n\n" + code + "\n\nThe _end_."
    fake_core.script["hi"] = stream(reply, 50)
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url), draft_interval=0.0)
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("hi"))
    finally:
        await fe.stop()
    texts = fake_api.texts()
    assert len(texts) >= 3
    shown = "".join(check_part(t) for t in texts)
    assert shown.startswith("Intro lorem")
    assert shown.rstrip().endswith("The end.")
    assert "if (a < 249 && b) { x(); }" in shown
    for draft in fake_api.calls_to("sendMessageDraft"):
        check_part(draft.params["text"])


HOSTILE = [
    "**unclosed bold and *half italic",
    '<script>alert("pwned")</script><b>raw<i>html</b></i> &nbsp; &#x1F600; &bogus',
    "```\nnever closed fence <pre></code>",
    "__**~~`",
    "[x](javascript:alert(1)) [y](http://ok.example/?q=<1>&r=2)",
    "A" * 10_000,
    "x" * 4095 + "😀" + "**" + "y" * 5000,
]


async def test_hostile_model_output_never_breaks_a_message(fake_api, fake_core, sqlite_url) -> None:
    for i, text in enumerate(HOSTILE):
        fake_core.script[f"p{i}"] = stream(text, 20)
        fake_core.script[f"/g{i}"] = stream(text, 20)
    fe = make_frontend(
        fake_core, make_settings(fake_api, sqlite_url), draft_interval=0.0, edit_interval=0.0
    )
    try:
        for i in range(len(HOSTILE)):
            await fe.dp.feed_raw_update(fe.bot, u.message(f"p{i}"))
            await fe.dp.feed_raw_update(fe.bot, u.message(f"/g{i}", chat_id=u.GROUP))
    finally:
        await fe.stop()
    calls = fake_api.calls_to("sendMessage", "editMessageText", "sendMessageDraft")
    assert len(calls) > 2 * len(HOSTILE)
    for call in calls:
        check_part(call.params["text"])
    private = "".join(check_part(t) for t in fake_api.texts(u.ALICE))
    assert '<script>alert("pwned")</script>' in private
    assert "A" * 4000 in private
    assert 'href="javascript' not in "".join(c.params["text"] for c in calls)


async def test_a_notice_and_a_command_answer_are_plain_messages(
    fake_api, fake_core, sqlite_url
) -> None:
    fake_core.script["/balance"] = [Notice("You have 5 credits", kind="info")]
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("/balance"))
    finally:
        await fe.stop()
    assert fake_api.texts() == ["You have 5 credits"]


async def test_the_asker_stops_a_private_draft(fake_api, fake_core, sqlite_url) -> None:
    async def endless():  # type: ignore[no-untyped-def]
        yield TextDelta("thinking")
        stop = fake_core.stops[-1]
        await asyncio.wait_for(stop.wait(), 5)
        yield FinalText("thinking", stopped=True)

    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url), draft_interval=0.0)
    fake_core.handle = lambda msg, stop=None: (fake_core.stops.append(stop), endless())[1]  # type: ignore[method-assign]
    try:
        turn = asyncio.create_task(fe.dp.feed_raw_update(fe.bot, u.message("go")))
        draft = (await fake_api.wait_for("sendMessageDraft"))[0]
        await fe.dp.feed_raw_update(fe.bot, u.draft_stopped(u.ALICE, int(draft.params["draft_id"])))
        await asyncio.wait_for(turn, 5)
    finally:
        await fe.stop()
    assert fake_api.texts() == ["thinking"]


async def test_only_the_asker_may_press_stop_in_a_group(fake_api, fake_core, sqlite_url) -> None:
    async def endless():  # type: ignore[no-untyped-def]
        yield TextDelta("partial answer")
        await asyncio.wait_for(fake_core.stops[-1].wait(), 5)
        yield FinalText("partial answer", stopped=True)

    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    fake_core.handle = lambda msg, stop=None: (fake_core.stops.append(stop), endless())[1]  # type: ignore[method-assign]
    try:
        turn = asyncio.create_task(
            fe.dp.feed_raw_update(fe.bot, u.message("/ask", chat_id=u.GROUP))
        )
        sent = (await fake_api.wait_for("sendMessage"))[0]
        data = sent.json("reply_markup")["inline_keyboard"][0][0]["callback_data"]
        message_id = next(iter(fake_api.messages))[1]
        await fe.dp.feed_raw_update(
            fe.bot, u.callback(data, user_id=u.BOB, chat_id=u.GROUP, message_id=message_id)
        )
        assert not fake_core.stops[-1].is_set()
        refusal = fake_api.calls_to("answerCallbackQuery")[-1]
        assert refusal.params.get("show_alert") == "true"
        await fe.dp.feed_raw_update(
            fe.bot, u.callback(data, user_id=u.ALICE, chat_id=u.GROUP, message_id=message_id)
        )
        await asyncio.wait_for(turn, 5)
    finally:
        await fe.stop()
    assert fake_core.stops[-1].is_set()
    assert [m["text"] for m in fake_api.messages.values()] == ["partial answer"]


async def test_groups_answer_only_what_is_meant_for_the_bot(
    fake_api, fake_core, sqlite_url
) -> None:
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    try:
        for update in [
            u.message("people chatting", chat_id=u.GROUP),
            u.message("/help@some_other_bot", chat_id=u.GROUP),
            u.message(f"@{BOT_USERNAME} what is 2+2?", chat_id=u.GROUP, language="zh-hans"),
            u.message("and 3+3?", chat_id=u.GROUP, user_id=u.BOB, reply_to_bot=True),
            u.message(f"/balance@{BOT_USERNAME}", chat_id=u.GROUP),
            u.message("hello in private"),
        ]:
            await fe.dp.feed_raw_update(fe.bot, update)
    finally:
        await fe.stop()
    seen = fake_core.seen
    assert [m.text for m in seen] == ["what is 2+2?", "and 3+3?", "/balance", "hello in private"]
    mention, reply, _, private = seen
    assert mention.platform == "telegram"
    assert (mention.user_id, mention.chat_id) == (str(u.ALICE), str(u.GROUP))
    assert mention.message_id.startswith(f"{u.GROUP}:")
    assert mention.language == "zh-hans"
    assert not mention.is_private
    assert reply.user_id == str(u.BOB)  # the sender's wallet pays
    assert private.is_private and private.chat_id == str(u.ALICE)


async def test_a_redelivered_update_is_processed_once(fake_api, fake_core, sqlite_url) -> None:
    fake_core.script["hi"] = [FinalText("once")]
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    update = u.message("hi")
    try:
        await fe.dp.feed_raw_update(fe.bot, update)
        await fe.dp.feed_raw_update(fe.bot, update)
    finally:
        await fe.stop()
    assert len(fake_core.seen) == 1
    assert fake_api.texts() == ["once"]


async def test_an_image_finished_after_a_restart_reaches_its_chat(
    fake_api, fake_core, sqlite_url
) -> None:
    from bot.events import Action, Delivery, ImageResult

    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    result = ImageResult(
        task_id="t1",
        url=fake_api.image_url("t1.png", png),
        caption="**a fox** <script>",
        actions=(Action("U1", "mj:t1:U1"), Action("V1", "mj:t1:V1"), Action("🔄", "mj:t1:REROLL")),
    )
    try:
        await fe.start()
        assert fake_core.sink is not None
        await fake_core.sink(Delivery("telegram", str(u.ALICE), str(u.ALICE), result))
    finally:
        await fe.stop()
    [photo] = fake_api.calls_to("sendPhoto")
    [(_, data)] = photo.files.values()
    assert data == png
    assert photo.params["caption"] == "<b>a fox</b> &lt;script&gt;"
    rows = photo.json("reply_markup")["inline_keyboard"]
    assert [[b["callback_data"] for b in row] for row in rows] == [
        ["mj:t1:U1"],
        ["mj:t1:V1"],
        ["mj:t1:REROLL"],
    ]
