"""Chat billing rules, end to end through the core against the simulator over HTTP."""

from __future__ import annotations

import asyncio

from billing.tokens import count_text
from bot.conversations import fit
from bot.core import Core
from bot.events import FinalText, Notice, TextDelta
from simulator import Simulator
from tests.core.conftest import (
    PRICES,
    SYSTEM,
    MakeCore,
    ask,
    captures,
    fund,
    message,
    of_type,
    prompt_tokens,
)

ACCOUNT = "telegram:u1"
MODEL = "gpt-3.5-turbo"


async def test_usage_is_the_truth(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    text = "Tell me something [[tokens:37]]"
    events = await ask(core, text)
    final = of_type(events, FinalText)[-1]
    assert "".join(e.text for e in of_type(events, TextDelta)) == final.text
    assert count_text(MODEL, final.text) == 37
    cost = PRICES.chat_cost(MODEL, prompt_tokens(MODEL, text), 37)
    [entry] = await captures(core, ACCOUNT)
    assert entry.amount == -cost
    assert entry.meta == {
        "model": MODEL,
        "prompt_tokens": prompt_tokens(MODEL, text),
        "completion_tokens": 37,
        "price_in": "40",
        "price_out": "40",
        "rule": "usage",
    }
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (100_000 - cost, 0)


async def test_cut_stream_charges_prompt_plus_received_text(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    text = "A long story please [[fault:cut]]"
    events = await ask(core, text)
    final = of_type(events, FinalText)[-1]
    assert final.text and not final.stopped
    assert any(isinstance(e, Notice) and "cut off" in e.text for e in events)
    received = count_text(MODEL, final.text)
    cost = PRICES.chat_cost(MODEL, prompt_tokens(MODEL, text), received)
    [entry] = await captures(core, ACCOUNT)
    assert entry.amount == -cost
    assert entry.meta["rule"] == "cut"
    assert entry.meta["completion_tokens"] == received
    assert (await core.wallet.balance(ACCOUNT)).total == 100_000 - cost


async def test_stream_without_usage_is_billed_like_a_cut(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    text = "hello [[fault:nousage]]"
    events = await ask(core, text)
    final = of_type(events, FinalText)[-1]
    cost = PRICES.chat_cost(MODEL, prompt_tokens(MODEL, text), count_text(MODEL, final.text))
    [entry] = await captures(core, ACCOUNT)
    assert (entry.amount, entry.meta["rule"]) == (-cost, "cut")


async def test_stop_mid_stream_charges_what_was_generated(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    text = "Write slowly [[fault:slow]]"
    stop = asyncio.Event()
    events = []
    async for event in core.handle(message(text), stop=stop):
        events.append(event)
        if isinstance(event, TextDelta):
            stop.set()  # the user presses stop after the first piece
    final = of_type(events, FinalText)[-1]
    assert final.stopped
    generated = "".join(e.text for e in of_type(events, TextDelta))
    assert final.text == generated
    cost = PRICES.chat_cost(MODEL, prompt_tokens(MODEL, text), count_text(MODEL, generated))
    [entry] = await captures(core, ACCOUNT)
    assert (entry.amount, entry.meta["rule"]) == (-cost, "stopped")
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (100_000 - cost, 0)


async def test_upstream_500_before_output_charges_nothing(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    events = await ask(core, "hello [[fault:500]]")
    assert [type(e) for e in events] == [Notice]
    assert events[0].kind == "error" and "Nothing was charged" in events[0].text
    assert await captures(core, ACCOUNT) == []
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (100_000, 0)


async def test_quota_exhausted_tells_the_user_and_charges_nothing(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    events = await ask(core, "hello [[fault:quota]]")
    assert [type(e) for e in events] == [Notice]
    assert "unavailable" in events[0].text
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (100_000, 0)


async def test_duplicate_message_is_handled_and_charged_once(core: Core, sim: Simulator) -> None:
    await fund(core, ACCOUNT, 100)
    msg = message("hello twice [[tokens:12]]")
    first = [e async for e in core.handle(msg)]
    second = [e async for e in core.handle(msg)]
    assert of_type(first, FinalText) and second == []
    cost = PRICES.chat_cost(MODEL, prompt_tokens(MODEL, msg.text), 12)
    [entry] = await captures(core, ACCOUNT)
    assert entry.amount == -cost
    assert (await core.wallet.balance(ACCOUNT)).total == 100_000 - cost


async def test_insufficient_credits_refused_with_balance_nothing_held(core: Core) -> None:
    # 0.5 credits pay the prompt but not MIN_REPLY_TOKENS (16) of gpt-3.5-turbo at 40/1K.
    await core.wallet.credit(ACCOUNT, 500, "fund-small", "test")
    events = await ask(core, "hello")
    [notice] = events
    assert notice.kind == "insufficient"
    assert "0.5 credits" in notice.text and "/topup" in notice.text
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (500, 0)
    assert await core.wallet.open_holds() == []


async def test_reply_is_capped_to_what_the_balance_pays(core: Core) -> None:
    available = 3_000  # 3 credits
    await core.wallet.credit(ACCOUNT, available, "fund-capped", "test")
    text = "a long answer [[tokens:500]]"
    prompt = prompt_tokens(MODEL, text)
    limit = PRICES.max_completion_tokens(MODEL, available, prompt)
    assert 16 <= limit < 500
    events = await ask(core, text)
    final = of_type(events, FinalText)[-1]
    assert count_text(MODEL, final.text) == limit
    [entry] = await captures(core, ACCOUNT)
    assert entry.amount == -PRICES.chat_cost(MODEL, prompt, limit)
    assert (await core.wallet.balance(ACCOUNT)).available >= 0


async def test_gpt4_conversation_is_trimmed_to_8k(core: Core) -> None:
    await fund(core, ACCOUNT, 100_000)
    assert of_type(await ask(core, "/model gpt-4"), FinalText)
    convs = core.services.conversations
    long_text = "The river runs past the old mill and under the stone bridge. " * 150
    for _ in range(6):  # ~12 x 1,900 tokens: far more than gpt-4's 8,192
        await convs.append(ACCOUNT, "telegram", "u1", long_text, long_text)
    text = "Summarize [[tokens:10]]"
    events = await ask(core, text)
    assert of_type(events, FinalText)
    [entry] = await captures(core, ACCOUNT)
    used = entry.meta["prompt_tokens"]  # the simulator's count, like OpenAI's
    assert 8192 - 1024 - 2000 < used <= 8192 - 1024  # full, with room for the longest reply
    stored = (await convs.history(ACCOUNT, "telegram", "u1"))[:12]
    history = [{"role": m["role"], "content": m["content"]} for m in stored]
    expected = fit(PRICES.get("gpt-4"), SYSTEM, [dict(m) for m in history], text, 8192 - 1024)
    assert 0 < expected.history_used < 12
    assert (
        used
        == expected.tokens
        == prompt_tokens("gpt-4", text, history=history[12 - expected.history_used :])
    )
    assert entry.amount == -PRICES.chat_cost("gpt-4", used, 10)
    assert entry.meta["price_in"] == "2310" and entry.meta["price_out"] == "4260"


async def test_context_length_error_trims_more_and_retries_once(core: Core, sim: Simulator) -> None:
    await fund(core, ACCOUNT, 100)
    await ask(core, "first question [[tokens:5]]")
    await ask(core, "second question [[tokens:5]]")
    sim.arm("context", 1)
    events = await ask(core, "third [[tokens:7]]")
    assert of_type(events, FinalText)
    charges = await captures(core, ACCOUNT)
    assert len(charges) == 3
    assert charges[0].meta["completion_tokens"] == 7


async def test_second_request_in_flight_is_told_to_wait(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    stop = asyncio.Event()
    first = core.handle(message("slow one [[fault:slow]]"), stop=stop)
    assert isinstance(await anext(first), TextDelta)  # the first reply is streaming
    held = (await core.wallet.balance(ACCOUNT)).held
    assert held > 0
    second = await ask(core, "impatient")
    assert [(type(e), e.kind) for e in second] == [(Notice, "wait")]
    assert (await core.wallet.balance(ACCOUNT)).held == held  # nothing more held
    stop.set()
    rest = [e async for e in first]
    assert of_type(rest, FinalText)[-1].stopped
    assert (await core.wallet.balance(ACCOUNT)).held == 0
    # Another user is not affected by u1's request.
    await fund(core, "telegram:u2", 10)
    assert of_type(await ask(core, "hi [[tokens:3]]", user="u2"), FinalText)


async def test_money_rules_on_every_backend(make_core: MakeCore, store_url: str) -> None:
    core = await make_core(store_url)
    await fund(core, ACCOUNT, 100)
    ok = message("hi [[tokens:20]]")
    assert of_type([e async for e in core.handle(ok)], FinalText)
    assert [e async for e in core.handle(ok)] == []  # redelivered
    assert of_type(await ask(core, "boom [[fault:500]]"), Notice)
    assert of_type(await ask(core, "/new"), FinalText)  # the next prompt has no history
    events = await ask(core, "cut [[fault:cut]]")
    received = count_text(MODEL, of_type(events, FinalText)[-1].text)
    expected = PRICES.chat_cost(MODEL, prompt_tokens(MODEL, ok.text), 20) + PRICES.chat_cost(
        MODEL, prompt_tokens(MODEL, "cut [[fault:cut]]"), received
    )
    assert [e.meta["rule"] for e in await captures(core, ACCOUNT)] == ["cut", "usage"]
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (100_000 - expected, 0)


async def cancelled_mid_stream(core: Core, msg) -> list[str]:
    """The adapter's job is cancelled (e.g. a shutdown) after the first piece of the reply."""
    streamed: list[str] = []
    first_piece = asyncio.Event()

    async def job() -> None:
        async for event in core.handle(msg):
            if isinstance(event, TextDelta):
                streamed.append(event.text)
                first_piece.set()

    task = asyncio.create_task(job())
    await first_piece.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return streamed


async def test_adapter_gone_on_wechat_charges_nothing_the_user_never_saw(core: Core) -> None:
    await fund(core, "wechat:oA", 100)
    msg = message("Write slowly [[fault:slow]]", "oA", platform="wechat", shows_partial=False)
    assert await cancelled_mid_stream(core, msg)  # text streamed, but WeChat shows none of it
    assert await captures(core, "wechat:oA") == []
    balance = await core.wallet.balance("wechat:oA")
    assert (balance.total, balance.held) == (100_000, 0)


async def test_adapter_gone_on_telegram_charges_the_text_already_shown(core: Core) -> None:
    await fund(core, ACCOUNT, 100)
    text = "Write slowly [[fault:slow]]"
    shown = "".join(await cancelled_mid_stream(core, message(text)))
    cost = PRICES.chat_cost(MODEL, prompt_tokens(MODEL, text), count_text(MODEL, shown))
    [entry] = await captures(core, ACCOUNT)
    assert (entry.amount, entry.meta["rule"]) == (-cost, "stopped")
    assert (await core.wallet.balance(ACCOUNT)).held == 0


async def test_chat_cancelled_while_holding_leaves_no_hold(core: Core) -> None:
    from tests.core.test_imagine import HoldThatLands, until_nothing_held

    await fund(core, ACCOUNT, 100)
    wallet = HoldThatLands(core.services.wallet)
    core.services.wallet = wallet  # type: ignore[assignment]
    job = asyncio.create_task(ask(core, "hello [[tokens:5]]"))
    await wallet.started.wait()
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    assert await until_nothing_held(core, ACCOUNT) == 0
    assert await captures(core, ACCOUNT) == []
