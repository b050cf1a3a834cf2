"""Conversations: the history a reply is written from, persisted in the Store.

A conversation belongs to one account in one chat. Before each request it is trimmed by
tokens, oldest messages first, to the model's context window minus room for the reply, so a
long chat keeps working on gpt-4's 8K window. Counting uses billing.tokens, the same rule the
charge uses, so the prompt we hold for is the prompt we send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from billing.pricing import ModelPrice
from billing.tokens import count_messages
from bot.store.base import Op, Store

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


def _wire(message: dict[str, object]) -> dict[str, str]:
    """The message as sent upstream: only the fields OpenAI knows."""
    return {k: v for k, v in message.items() if k in ("role", "content", "name")}  # type: ignore[misc]


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
    tokens = _system_cache[key] + count_messages(price, tail) - 3
    if tokens > limit:
        raise TooLong(tokens, limit)
    kept: Chat = []
    candidates = history if max_history is None else history[len(history) - max_history :]
    for message in reversed(candidates):
        cost = message_tokens(price, message, rule)
        if tokens + cost > limit:
            break
        tokens += cost
        kept.append(_wire(message))
    kept.reverse()
    return Prompt(head + kept + tail, tokens, len(kept))


def parse_history(raw: str | None) -> list[dict]:
    """A stored history; anything unreadable reads as an empty one."""
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


class Conversations:
    """Histories and each account's chosen model, in the Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def _key(account: str, platform: str, chat_id: str) -> str:
        return f"conv:{account}:{platform}:{chat_id}"

    async def history(self, account: str, platform: str, chat_id: str) -> list[dict]:
        return parse_history(await self.store.get(self._key(account, platform, chat_id)))

    def keys(self, account: str, platform: str, chat_id: str) -> list[str]:
        """The store keys of the account's chosen model and of this chat's history."""
        return [f"model:{account}", self._key(account, platform, chat_id)]

    async def model_and_history(
        self, account: str, platform: str, chat_id: str
    ) -> tuple[str | None, list[dict]]:
        """The account's chosen model and this chat's history, in one store round trip."""
        keys = self.keys(account, platform, chat_id)
        get_many = getattr(self.store, "get_many", None)  # a Store written before get_many
        if get_many is not None:
            model, raw = await get_many(keys)
        else:
            model, raw = await self.store.get(keys[0]), await self.store.get(keys[1])
        return model, parse_history(raw)

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
    ) -> Op:
        """The store write that adds one exchange to `history` (see `append`), for a batch."""
        history = [*history, {"role": "user", "content": user_text}]
        history.append({"role": "assistant", "content": reply})
        history = history[-MAX_STORED_MESSAGES:]
        return (
            "set",
            self._key(account, platform, chat_id),
            json.dumps(history, ensure_ascii=False),
            CONVERSATION_TTL_SECONDS,
        )

    async def reset(self, account: str, platform: str, chat_id: str) -> None:
        await self.store.delete(self._key(account, platform, chat_id))

    async def model(self, account: str) -> str | None:
        return await self.store.get(f"model:{account}")

    async def set_model(self, account: str, model: str) -> None:
        await self.store.set(f"model:{account}", model)
