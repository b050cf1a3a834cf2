"""Update middlewares: an update Telegram delivers again is processed once.

Telegram redelivers an update when a webhook answer is late or failed, and after a restart
before the offset was confirmed. The first delivery claims the update id in the core's store
(`add` is atomic across processes); any later one is dropped before a handler sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

from bot.store.base import Store
from bot.store.keys import tg_update_key

log = logging.getLogger(__name__)


class DedupeMiddleware(BaseMiddleware):
    """Outer update middleware: skip an update_id this bot has already seen (within `ttl`)."""

    def __init__(self, store: Store, bot_id: int, ttl: float) -> None:
        self._store = store
        self._bot_id = bot_id
        self._ttl = ttl

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Update):
            return await handler(event, data)
        key = tg_update_key(self._bot_id, event.update_id)
        if not await self._store.add(key, "1", ttl=self._ttl):
            log.info("update %s delivered again; skipped", event.update_id)
            return None
        try:
            return await handler(event, data)
        except Exception:
            # Not handled: a redelivery of this update may try again (money paths also keep
            # their own durable record, e.g. pending Stars payments).
            await self._store.delete(key)
            raise
