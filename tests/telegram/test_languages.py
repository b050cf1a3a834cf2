"""The front end's own words follow the user's Telegram language (English or Chinese)."""

from __future__ import annotations

from bot.events import FinalText, TextDelta
from fakes import telegram_updates as u
from tests.telegram.conftest import make_frontend, make_settings


async def test_a_chinese_user_gets_chinese_invoices_and_stop_button(
    fake_api, fake_core, sqlite_url
) -> None:
    fake_core.script["/ask"] = [TextDelta("你好"), FinalText("你好")]
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    try:
        await fe.dp.feed_raw_update(fe.bot, u.message("/topup", language="zh-hans"))
        await fe.dp.feed_raw_update(fe.bot, u.message("/ask", chat_id=u.GROUP, language="zh"))
        await fe.dp.feed_raw_update(fe.bot, u.message("/topup", user_id=u.BOB))
    finally:
        await fe.stop()
    invoices = fake_api.calls_to("sendInvoice")
    assert [i.params["title"] for i in invoices] == [
        "10000 积分",
        "55000 积分",
        "10000 credits",
        "55000 credits",
    ]
    first = next(c for c in fake_api.calls_to("sendMessage") if int(c.params["chat_id"]) < 0)
    assert first.json("reply_markup")["inline_keyboard"][0][0]["text"] == "⏹ 停止"
