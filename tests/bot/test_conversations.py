"""Conversation histories: trimming by exact token counts, and the stored form that lets a save
reuse the stored text of the messages it keeps."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing import PriceList
from billing.tokens import count_messages
from bot import conversations as convs
from bot.conversations import MAX_STORED_MESSAGES, Conversations, fit, parse_history

PRICES = PriceList.load()
MINI = PRICES.get("gpt-4o-mini")  # o200k_base
GPT4 = PRICES.get("gpt-4")  # cl100k_base: another tokenizer rule
CONV = Conversations(None)  # type: ignore[arg-type]  # saving() only builds the write


def exchange(raw: str | None, text: str, reply: str, price=MINI) -> tuple[str, convs.Prompt]:  # type: ignore[no-untyped-def]
    """One request as the chat flow makes it: read, fit, save; the new stored text."""
    history = parse_history(raw)
    prompt = fit(price, "You are helpful.", history, text, 1_000_000)
    op = CONV.saving("acct", "telegram", "c1", text, reply, history, price=price, prompt=prompt)
    assert op[0] == "set" and op[1] == "conv:acct:telegram:c1"
    return op[2], prompt


def wire(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# Texts that would break a careless line format: newlines, ",\n", JSON punctuation, U+2028.
TEXT = st.text(
    alphabet=st.sampled_from(list('ab ,\n"\\{}[]:\u2028\u00e9\u4f60')) | st.characters(),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=30))
def test_saved_history_reads_back_as_every_exchange_kept(turns: list[tuple[str, str]]) -> None:
    raw = None
    expected: list[dict] = []
    for text, reply in turns:
        raw, _ = exchange(raw, text, reply)
        expected += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
    expected = expected[-MAX_STORED_MESSAGES:]
    stored = json.loads(raw)
    assert wire(stored) == expected
    assert wire(parse_history(raw)) == expected
    assert raw.count("\n") == len(expected) + 1  # one message per line
    for message in stored:  # every message carries its exact count
        assert message["n"] == {"o200k_base:3:1": count_messages(MINI, [wire([message])[0]]) - 3}


def test_a_save_reuses_the_stored_lines_of_the_messages_it_keeps() -> None:
    raw = None
    turns = MAX_STORED_MESSAGES // 2 + 3
    for n in range(turns):
        raw, _ = exchange(raw, f"question {n}", f"answer {n}")
    history = parse_history(raw)
    assert history.lines is not None and len(history.lines) == MAX_STORED_MESSAGES
    assert [m["content"] for m in history] == [
        f"{kind} {n}" for n in range(3, turns) for kind in ("question", "answer")
    ]  # the newest 40, in order: the oldest exchanges were dropped, not the newest
    # A stored line is reused as it is: a (harmless) marker put into one survives the save.
    marked = raw.replace('"answer 5"', '"answer 5", "x": 1')
    history = parse_history(marked)
    op = CONV.saving("acct", "telegram", "c1", "q", "a", history, price=MINI)
    kept = json.loads(op[2])
    (answer5,) = [m for m in kept if m["content"] == "answer 5"]
    assert answer5["x"] == 1
    assert kept[-1]["content"] == "a" and len(kept) == MAX_STORED_MESSAGES


def test_counting_by_another_rule_encodes_the_history_again() -> None:
    """Switching to a model of another tokenizer counts the history anew; the new counts are
    stored (the old lines lack them), so the next request finds them."""
    raw = None
    for n in range(4):
        raw, _ = exchange(raw, f"question {n}", f"answer {n}")
    history = parse_history(raw)
    prompt = fit(GPT4, "", history, "next", 100_000)
    assert history.changed
    assert prompt.tokens == count_messages(GPT4, prompt.messages)
    op = CONV.saving("acct", "telegram", "c1", "next", "reply", history, price=GPT4, prompt=prompt)
    stored = json.loads(op[2])
    assert all("cl100k_base:3:1" in m["n"] for m in stored)
    assert all("o200k_base:3:1" in m["n"] for m in stored[:-2])


def test_an_older_stored_form_reads_and_saves_the_same_history() -> None:
    legacy = json.dumps(
        [{"role": "user", "content": "hi, there"}, {"role": "assistant", "content": "hello"}]
    )
    history = parse_history(legacy)
    assert history.lines is None
    raw, prompt = exchange(legacy, "and now?", "now this")
    assert wire(json.loads(raw)) == [
        {"role": "user", "content": "hi, there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
        {"role": "assistant", "content": "now this"},
    ]
    assert prompt.history_used == 2
    for bad in ("", "not json", "{}", "[1, 2]"):
        assert parse_history(bad) == []
    mixed = parse_history('[\n{"role": "user", "content": "a"},\n7\n]')
    assert wire(mixed) == [{"role": "user", "content": "a"}] and mixed.lines is None


def test_fit_counts_exactly_and_keeps_the_newest_that_fit() -> None:
    raw = None
    for n in range(10):
        raw, _ = exchange(raw, f"question number {n}", f"answer number {n} " * 5)
    history = parse_history(raw)
    whole = fit(MINI, "sys", history, "last", 1_000_000)
    assert whole.tokens == count_messages(MINI, whole.messages)
    assert whole.text_tokens == count_messages(MINI, [{"role": "user", "content": "last"}]) - 3
    assert whole.history_used == 20
    limit = whole.tokens - 1  # one token short: the oldest message goes
    trimmed = fit(MINI, "sys", history, "last", limit)
    assert trimmed.history_used == 19
    assert trimmed.messages[1:-1] == whole.messages[2:-1]
    assert trimmed.tokens == count_messages(MINI, trimmed.messages) <= limit
    assert not history.changed  # every message was counted when it was saved
