"""The real core on a SQLite wallet and the simulated upstream, behind the Telegram front end.

Money really moves here: balances are read from the wallet after each scenario.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from adapters.telegram.stars import encode_payload
from bot.payments import stars as payments
from fakes import telegram_updates as u
from fakes.telegram_api import _error as fake_api_error
from tests.telegram.conftest import ADMIN, available, fund
from tests.telegram.html_check import check_part

PNG = b"\x89PNG\r\n\x1a\n"


async def test_a_private_chat_is_streamed_and_billed(real, fake_api) -> None:
    fe = real
    await fund(fe.core, u.ALICE, 100)
    before = await available(fe.core, u.ALICE)
    await fe.dp.feed_raw_update(fe.bot, u.message("Tell me something [[tokens:120]]"))
    texts = fake_api.texts(u.ALICE)
    assert len(texts) == 1 and len(texts[0]) > 200
    check_part(texts[0])
    assert fake_api.calls_to("sendMessageDraft")
    spent = before - await available(fe.core, u.ALICE)
    assert spent > 0  # gpt-3.5-turbo: prompt + 120 completion tokens at 0.04 credits each
    assert spent < 10_000


async def test_stopping_a_draft_bills_what_was_generated(real, fake_api) -> None:
    fe = real
    await fund(fe.core, u.ALICE, 100)
    before = await available(fe.core, u.ALICE)
    turn = asyncio.create_task(
        fe.dp.feed_raw_update(fe.bot, u.message("Write an essay [[fault:slow]]"))
    )
    draft = (await fake_api.wait_for("sendMessageDraft"))[0]
    assert draft.params["can_stop"] == "true"
    stop = u.draft_stopped(u.ALICE, int(draft.params["draft_id"]))
    await fe.dp.feed_raw_update(fe.bot, stop)
    await asyncio.wait_for(turn, 10)
    [final] = fake_api.texts(u.ALICE)
    assert draft.params["text"] in final  # what was shown is what is kept
    after = await available(fe.core, u.ALICE)
    # the prompt and the words generated (about 1 credit), not the 1,024-token hold (~41)
    assert 0 < before - after < 5_000
    account = await fe.core.account_of("telegram", str(u.ALICE))
    assert not [h for h in await fe.core.wallet.open_holds() if h.account == account]


async def test_imagine_uploads_the_image_with_buttons_and_refuses_a_strangers_press(
    real, fake_api
) -> None:
    fe = real
    await fund(fe.core, u.ALICE, 10_000)
    await fund(fe.core, u.BOB, 10_000)
    alice_before = await available(fe.core, u.ALICE)
    await fe.dp.feed_raw_update(fe.bot, u.message("/imagine a red fox", chat_id=u.GROUP))

    assert fake_api.calls_to("sendMessage")  # the progress message
    [photo] = fake_api.calls_to("sendPhoto")
    reference = photo.params["photo"]
    assert reference.startswith("attach://")  # uploaded in the request, never by URL
    name, data = photo.files[reference.removeprefix("attach://")]
    assert photo.content_type.startswith("multipart/form-data")
    assert data.startswith(PNG) and name.endswith(".png")
    rows = photo.json("reply_markup")["inline_keyboard"]
    buttons = [b for row in rows for b in row]
    assert [b["text"] for b in buttons] == [
        *(f"U{i}" for i in range(1, 5)),
        *(f"V{i}" for i in range(1, 5)),
        "🔄",
    ]
    assert all(len(b["callback_data"].encode()) <= 64 for b in buttons)
    assert alice_before - await available(fe.core, u.ALICE) == 2_000_000  # 2,000 credits

    bob_before = await available(fe.core, u.BOB)
    image_message = next(iter(k for k, v in fake_api.messages.items() if v["text"] is None))[1]
    u1 = buttons[0]["callback_data"]
    await fe.dp.feed_raw_update(
        fe.bot, u.callback(u1, user_id=u.BOB, chat_id=u.GROUP, message_id=image_message)
    )
    refusal = fake_api.calls_to("answerCallbackQuery")[-1]
    assert refusal.params["text"]
    assert refusal.params.get("show_alert") == "true"
    assert len(fake_api.calls_to("sendPhoto")) == 1
    assert await available(fe.core, u.BOB) == bob_before

    await fe.dp.feed_raw_update(
        fe.bot, u.callback(u1, user_id=u.ALICE, chat_id=u.GROUP, message_id=image_message)
    )
    assert len(fake_api.calls_to("sendPhoto")) == 2  # the upscale, billed to Alice
    assert await available(fe.core, u.ALICE) < alice_before - 2_000_000


async def test_stars_top_up_credits_once_and_an_admin_refund_takes_it_back(real, fake_api) -> None:
    fe = real
    await fe.dp.feed_raw_update(fe.bot, u.message("/topup"))
    invoices = fake_api.calls_to("sendInvoice")
    assert [i.params["currency"] for i in invoices] == ["XTR", "XTR"]
    prices = [i.json("prices")[0]["amount"] for i in invoices]
    assert prices == [50, 250]
    payload = invoices[0].params["payload"]
    assert payload == encode_payload(fe.tg.packs[0], u.ALICE)

    # a forged amount and someone else's invoice are refused before any money moves
    await fe.dp.feed_raw_update(fe.bot, u.pre_checkout(payload, user_id=u.ALICE, total=1))
    await fe.dp.feed_raw_update(fe.bot, u.pre_checkout(payload, user_id=u.BOB, total=50))
    await fe.dp.feed_raw_update(
        fe.bot, u.pre_checkout(payload, user_id=u.ALICE, total=50, currency="USD")
    )
    await fe.dp.feed_raw_update(fe.bot, u.pre_checkout(payload, user_id=u.ALICE, total=50))
    answers = [a.params["ok"] for a in fake_api.calls_to("answerPreCheckoutQuery")]
    assert answers == ["false", "false", "false", "true"]

    before = await available(fe.core, u.ALICE)
    paid = u.paid(payload, user_id=u.ALICE, total=50, charge_id="charge-1")
    await fe.dp.feed_raw_update(fe.bot, paid)
    again = u.paid(payload, user_id=u.ALICE, total=50, charge_id="charge-1")  # new update_id
    await fe.dp.feed_raw_update(fe.bot, again)
    assert await available(fe.core, u.ALICE) - before == 10_000_000  # 10,000 credits, once
    receipts = [t for t in fake_api.texts(u.ALICE) if "10000" in t]
    assert len(receipts) == 1

    await fe.dp.feed_raw_update(fe.bot, u.message(f"/refundstars {u.ALICE} charge-1"))
    assert not fake_api.calls_to("refundStarPayment")  # only the operator may
    await fe.dp.feed_raw_update(
        fe.bot, u.message(f"/refundstars {u.ALICE} charge-1", user_id=ADMIN)
    )
    [refund] = fake_api.calls_to("refundStarPayment")
    assert refund.params == {"user_id": str(u.ALICE), "telegram_payment_charge_id": "charge-1"}
    assert await available(fe.core, u.ALICE) == before


async def test_a_paid_stars_payment_whose_crediting_failed_is_credited_once_later(
    real, fake_api, monkeypatch
) -> None:
    fe = real
    payload = encode_payload(fe.tg.packs[0], u.ALICE)
    before = await available(fe.core, u.ALICE)
    credit = fe.core.credit_payment
    failures = [ConnectionError("database went away")]

    async def failing_once(*args, **kw):
        if failures:
            raise failures.pop()
        return await credit(*args, **kw)

    monkeypatch.setattr(fe.core, "credit_payment", failing_once)
    paid = u.paid(payload, user_id=u.ALICE, total=50, charge_id="charge-9")
    with pytest.raises(ConnectionError):
        await fe.dp.feed_raw_update(fe.bot, paid)
    assert await available(fe.core, u.ALICE) == before  # paid, not yet credited...
    assert await fe.core.retry_stars() == 1  # ...until the Stars retry runs
    assert await fe.core.retry_stars() == 0
    await fe.dp.feed_raw_update(fe.bot, paid)  # the same update again: not dropped, not doubled
    assert await available(fe.core, u.ALICE) - before == 10_000_000


async def test_the_front_end_retries_pending_stars_payments_in_the_background(
    real, fake_api
) -> None:
    fe = real
    await fe.core.kv.set(
        payments.pending_key("charge-7"),
        json.dumps({"user_id": str(u.BOB), "credits_milli": 10_000_000, "stars": 50}),
    )
    await fe.core.kv.sadd(payments.PENDING, "charge-7")
    before = await available(fe.core, u.BOB)
    fe.pending_retry_seconds = 0.05
    await fe.start()
    for _ in range(100):
        if await available(fe.core, u.BOB) > before:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # several more rounds: still credited once
    assert await available(fe.core, u.BOB) - before == 10_000_000


async def test_refundstars_takes_the_credits_back_before_refunding_the_stars(
    real, fake_api, monkeypatch
) -> None:
    fe = real
    payload = encode_payload(fe.tg.packs[0], u.ALICE)
    before = await available(fe.core, u.ALICE)
    await fe.dp.feed_raw_update(fe.bot, u.paid(payload, user_id=u.ALICE, total=50, charge_id="c1"))
    refund = u.message(f"/refundstars {u.ALICE} c1", user_id=ADMIN)

    async def refused(params, files):
        return fake_api_error(500, "Internal Server Error: try later")

    monkeypatch.setattr(fake_api, "_m_refundStarPayment", refused)
    await fe.dp.feed_raw_update(fe.bot, refund)
    assert not fake_api.refunded
    assert await available(fe.core, u.ALICE) == before  # the credits went first
    assert "retry" in fake_api.texts(ADMIN)[-1]
    monkeypatch.undo()
    await fe.dp.feed_raw_update(fe.bot, u.message(f"/refundstars {u.ALICE} c1", user_id=ADMIN))
    assert fake_api.refunded == {"c1"}
    assert await available(fe.core, u.ALICE) == before  # taken back once

    # Credits already spent: nothing can be taken back, so the Stars are not refunded.
    bobs = encode_payload(fe.tg.packs[0], u.BOB)
    await fe.dp.feed_raw_update(fe.bot, u.paid(bobs, user_id=u.BOB, total=50, charge_id="c2"))
    account = await fe.core.account_of("telegram", str(u.BOB))
    await fe.core.wallet.debit(account, 10_000_000, "spent:c2", "spent it all")
    await fe.dp.feed_raw_update(fe.bot, u.message(f"/refundstars {u.BOB} c2", user_id=ADMIN))
    assert fake_api.refunded == {"c1"}
    assert "Nothing refunded" in fake_api.texts(ADMIN)[-1]


async def test_topup_code_goes_to_the_core(real, fake_api) -> None:
    fe = real
    await fe.dp.feed_raw_update(fe.bot, u.message("/topup NOT-A-CODE"))
    assert not fake_api.calls_to("sendInvoice")
    [answer] = fake_api.texts(u.ALICE)
    assert "code" in answer.lower()


async def test_a_photo_is_answered_with_a_notice_and_costs_nothing(real, fake_api) -> None:
    fe = real
    await fund(fe.core, u.ALICE, 100)
    before = await available(fe.core, u.ALICE)
    await fe.dp.feed_raw_update(fe.bot, u.photo())  # no caption: still answered, not ignored
    await fe.dp.feed_raw_update(fe.bot, u.photo("What is in this picture?"))
    answers = fake_api.texts(u.ALICE)
    assert len(answers) == 2 and all("can't see pictures" in a for a in answers)
    assert not fake_api.calls_to("sendMessageDraft")  # nothing was streamed from the model
    assert await available(fe.core, u.ALICE) == before


async def test_a_photo_in_a_group_is_answered_only_when_it_is_for_the_bot(real, fake_api) -> None:
    fe = real
    await fe.dp.feed_raw_update(fe.bot, u.photo(chat_id=u.GROUP))
    assert fake_api.texts(u.GROUP) == []
    await fe.dp.feed_raw_update(fe.bot, u.photo(chat_id=u.GROUP, reply_to_bot=True))
    [answer] = fake_api.texts(u.GROUP)
    assert "can't see pictures" in answer
