"""Conversations: the history a reply is written from, persisted in the Store.

A conversation belongs to one account in one chat. Before each request it is trimmed by
tokens, oldest messages first, to the model's context window minus room for the reply, so a
long chat keeps working on gpt-4's 8K window. Counting uses billing.tokens, the same rule the
charge uses, so the prompt we hold for is the prompt we send.

Stored form: a JSON list of messages, each with its token count cached under "n". Written as
one message per line ("[\n" + ",\n".join(messages) + "\n]": JSON never puts a raw newline
inside a value), so adding an exchange reuses the stored text of the messages kept instead of
encoding the whole history again. Any JSON list reads the same (older histories included).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from billing.pricing import ModelPrice
from billing.tokens import count_messages
from bot.store.base import Op, Store
from bot.store.keys import conversation_key, model_key

MAX_STORED_MESSAGES = 40  # older turns could never fit a useful window anyway
CONVERSATION_TTL_SECONDS = 30 * 86400

Chat = list[dict[str, str]]


class TooLong(Exception):
    """The new message alone (with the system prompt and room for a reply) does not fit."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"{tokens} tokens > {limit}")
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Prompt:
    """What is sent upstream: the messages, their exact token count, and history kept."""

    messages: Chat
    tokens: int
    history_used: int
    text_tokens: int | None = None  # the new message's own share of `tokens`
    rule: str = ""  # the tokenizer rule it was counted by (see message_tokens)


class History(list):  # type: ignore[type-arg]
    """A stored history as read: its messages, and the stored text they came from.

    `lines` are the stored messages' own JSON texts, one per message, when the stored form
    allows (one message per line, nothing dropped as unreadable); `changed` is set once a
    message gained a token count, which the stored text of it lacks.
    """

    __slots__ = ("changed", "lines")

    def __init__(self, messages: Iterable[dict] = (), lines: list[str] | None = None) -> None:
        super().__init__(messages)
        self.lines = lines
        self.changed = False


def _rule(price: ModelPrice) -> str:
    return f"{price.encoding}:{price.tokens_per_message}:{price.tokens_per_name}"


def message_tokens(price: ModelPrice, message: dict[str, object], rule: str = "") -> int:
    """One message's share of a prompt count (count_messages([m]) minus the 3 priming tokens).

    Cached inside the stored message under "n" (per tokenizer rule), so a long history is
    counted once rather than on every request.
    """
    rule = rule or _rule(price)
    cache = message.get("n")
    if isinstance(cache, dict) and isinstance(cache.get(rule), int):
        return cache[rule]
    value = count_messages(price, [_wire(message)]) - 3
    if not isinstance(cache, dict):
        cache = {}
        message["n"] = cache
    cache[rule] = value
    return value


_WIRE_FIELDS = ("role", "content", "name")


def _wire(message: dict[str, object]) -> dict[str, str]:
    """The message as sent upstream: only the fields OpenAI knows."""
    if "name" not in message and "role" in message and "content" in message:
        return {"role": message["role"], "content": message["content"]}  # type: ignore[dict-item]
    return {k: v for k, v in message.items() if k in _WIRE_FIELDS}  # type: ignore[misc]


_system_cache: dict[tuple[str, str], int] = {}


def fit(
    price: ModelPrice,
    system: str,
    history: list[dict],
    text: str,
    limit: int,
    *,
    max_history: int | None = None,
) -> Prompt:
    """System + as much recent history as fits in `limit` tokens + the new user message.

    The chat count is additive (3 priming + each message's own count), so each message is
    counted once and the total is exact: it equals count_messages() of the result.
    """
    head: Chat = [{"role": "system", "content": system}] if system else []
    tail: Chat = [{"role": "user", "content": text}]
    rule = _rule(price)
    key = (rule, system)
    if key not in _system_cache:
        if len(_system_cache) > 64:
            _system_cache.clear()
        _system_cache[key] = count_messages(price, head)
    text_tokens = count_messages(price, tail) - 3
    tokens = _system_cache[key] + text_tokens
    if tokens > limit:
        raise TooLong(tokens, limit)
    kept: Chat = []
    candidates = history if max_history is None else history[len(history) - max_history :]
    for message in reversed(candidates):
        cache = message.get("n")
        cost = cache.get(rule) if type(cache) is dict else None
        if type(cost) is not int:  # not counted by this rule yet: count it once, keep it
            cost = message_tokens(price, message, rule)
            if isinstance(history, History):
                history.changed = True
        if tokens + cost > limit:
            break
        tokens += cost
        kept.append(_wire(message))
    kept.reverse()
    return Prompt(head + kept + tail, tokens, len(kept), text_tokens, rule)


_encode = json.JSONEncoder(ensure_ascii=False).encode


def parse_history(raw: str | None) -> History:
    """A stored history; anything unreadable reads as an empty one."""
    if not raw:
        return History()
    try:
        data = json.loads(raw)
    except ValueError:
        return History()
    if not isinstance(data, list):
        return History()
    messages = [m for m in data if isinstance(m, dict)]
    lines = None
    if raw.startswith("[\n") and raw.endswith("\n]") and len(messages) == len(data):
        lines = raw[2:-2].split(",\n")
        if len(lines) != len(messages):
            lines = None
    return History(messages, lines)


def _stored(history: list[dict], keep: int, new: list[dict]) -> str:
    """The stored text of the last `keep` messages of `history` + `new`, one message per line.

    The kept messages' own lines are reused when `history` is a History read unchanged from
    such a text; otherwise each is encoded again.
    """
    kept = history[-keep:] if keep > 0 else []
    lines = history.lines if isinstance(history, History) and not history.changed else None
    if lines is not None and len(lines) == len(history):
        old = lines[len(lines) - len(kept) :] if kept else []
    else:
        old = [_encode(m) for m in kept]
    return "[\n" + ",\n".join([*old, *map(_encode, new)]) + "\n]"


class Conversations:
    """Histories and each account's chosen model, in the Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def _key(account: str, platform: str, chat_id: str) -> str:
        return conversation_key(account, platform, chat_id)

    async def history(self, account: str, platform: str, chat_id: str) -> list[dict]:
        return parse_history(await self.store.get(self._key(account, platform, chat_id)))

    def keys(self, account: str, platform: str, chat_id: str) -> list[str]:
        """The store keys of the account's chosen model and of this chat's history."""
        return [model_key(account), self._key(account, platform, chat_id)]

    async def append(
        self,
        account: str,
        platform: str,
        chat_id: str,
        user_text: str,
        reply: str,
        *,
        history: list[dict] | None = None,
    ) -> None:
        """Add one exchange (only when the reply was delivered, even partly).

        `history` is the list read for this request, which saves a second read; a concurrent
        write in between is impossible because the in-flight limit serializes a user.
        """
        if history is None:
            history = await self.history(account, platform, chat_id)
        op = self.saving(account, platform, chat_id, user_text, reply, history)
        await self.store.set(*op[1:])

    def saving(
        self,
        account: str,
        platform: str,
        chat_id: str,
        user_text: str,
        reply: str,
        history: list[dict],
        *,
        price: ModelPrice | None = None,
        prompt: Prompt | None = None,
    ) -> Op:
        """The store write that adds one exchange to `history` (see `append`), for a batch.

        With the `price` the exchange was counted by, both new messages are stored with their
        token counts (the user's from `prompt`, which counted it), so the next request finds
        every message counted and the next save reuses every kept message's stored text.
        """
        user: dict = {"role": "user", "content": user_text}
        assistant: dict = {"role": "assistant", "content": reply}
        if price is not None:
            rule = _rule(price)
            if prompt is not None and prompt.rule == rule and prompt.text_tokens is not None:
                user["n"] = {rule: prompt.text_tokens}
            else:
                message_tokens(price, user, rule)
            message_tokens(price, assistant, rule)
        return (
            "set",
            self._key(account, platform, chat_id),
            _stored(history, MAX_STORED_MESSAGES - 2, [user, assistant]),
            CONVERSATION_TTL_SECONDS,
        )

    async def reset(self, account: str, platform: str, chat_id: str) -> None:
        await self.store.delete(self._key(account, platform, chat_id))

    async def model(self, account: str) -> str | None:
        return await self.store.get(model_key(account))

    async def set_model(self, account: str, model: str) -> None:
        await self.store.set(model_key(account), model)
