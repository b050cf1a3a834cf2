"""Per-chat flood control: wait out a chat's `retry_after`, space out edits, never lose a final.

Telegram answers 429 with `retry_after` when a chat gets too many messages, and aiogram raises
`TelegramRetryAfter` without retrying. A chat's ban is remembered here: an optional update (a
draft or an edit in the middle of a stream) is skipped while the chat is banned, because the next
one carries the newer text anyway; an essential call (the final text) waits and tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiogram.exceptions import TelegramBadRequest, TelegramRetryAfter

log = logging.getLogger(__name__)
T = TypeVar("T")

NOT_MODIFIED = "message is not modified"


class ChatPacer:
    """Flood-control state of every chat this process writes to."""

    def __init__(self, *, max_waits: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_waits = max_waits
        self._clock = clock
        self._banned_until: dict[int, float] = {}
        self._last_sent: dict[int, float] = {}

    def due(self, chat_id: int, interval: float) -> bool:
        """Whether an optional update may go now: not banned, and `interval` since the last."""
        now = self._clock()
        if self._banned_until.get(chat_id, 0.0) > now:
            return False
        return now - self._last_sent.get(chat_id, -1e9) >= interval

    async def call(
        self, chat_id: int, request: Callable[[], Awaitable[T]], *, essential: bool
    ) -> T | None:
        """Run `request` for `chat_id`; None if an optional one was skipped (flood control).

        "Message is not modified" means Telegram already shows that text: it returns True.
        """
        waits = 0
        while True:
            ban = self._banned_until.get(chat_id, 0.0) - self._clock()
            if ban > 0:
                if not essential:
                    return None
                await asyncio.sleep(ban)
            self._last_sent[chat_id] = self._clock()
            try:
                return await request()
            except TelegramRetryAfter as exc:
                self._banned_until[chat_id] = self._clock() + exc.retry_after
                log.info("chat %s flood-controlled for %ss", chat_id, exc.retry_after)
                waits += 1
                if not essential or waits > self._max_waits:
                    if essential:
                        raise
                    return None
            except TelegramBadRequest as exc:
                if NOT_MODIFIED in exc.message:
                    return True  # type: ignore[return-value]
                raise
            finally:
                if len(self._last_sent) > 100_000:  # forget chats quiet for a minute
                    cutoff = self._clock() - 60
                    self._last_sent = {k: v for k, v in self._last_sent.items() if v > cutoff}
                    self._banned_until = {k: v for k, v in self._banned_until.items() if v > cutoff}
