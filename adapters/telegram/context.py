"""What every Telegram handler is given (through the dispatcher's workflow data, not globals).

`CoreAPI` is the part of `bot.core.Core` this front end uses, written down so the adapter
depends on a contract rather than on the core's module.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from adapters.telegram.pacing import ChatPacer
from adapters.telegram.stars import StarsPack
from billing.wallet.base import Entry
from bot.events import Delivery, Event, Message
from bot.scheduler import Scheduler
from bot.store.base import Store

PLATFORM = "telegram"


class CoreAPI(Protocol):
    """The conversation core as the Telegram front end sees it."""

    kv: Store
    scheduler: Scheduler

    def handle(
        self, msg: Message, *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[Event]: ...

    def press(
        self,
        platform: str,
        user_id: str,
        chat_id: str,
        data: str,
        *,
        message_id: str,
        language: str | None = None,
    ) -> AsyncIterator[Event]: ...

    def set_sink(self, platform: str, sink: Callable[[Delivery], Awaitable[None]]) -> None: ...

    async def stars_paid(
        self, charge_id: str, user_id: str, credits_milli: int, stars: int, *, receipt_ttl: float
    ) -> bool: ...

    async def retry_stars(self) -> int: ...

    async def reverse_stars(self, charge_id: str, *, reason: str) -> Entry: ...


@dataclass
class StopControl:
    """A running reply that its asker may stop."""

    event: asyncio.Event
    owner: int  # the Telegram user id allowed to stop it


class StopBoard:
    """Running replies by their stop handle: a draft id (private) or a button token (groups)."""

    def __init__(self) -> None:
        self._controls: dict[str, StopControl] = {}

    def add(self, handle: str, control: StopControl) -> None:
        self._controls[handle] = control

    def get(self, handle: str) -> StopControl | None:
        return self._controls.get(handle)

    def discard(self, handle: str) -> None:
        self._controls.pop(handle, None)

    def __len__(self) -> int:
        return len(self._controls)


class ProgressBoard:
    """The progress message of each image task, so later progress edits it (bounded)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[tuple[int, str], int] = OrderedDict()

    def get(self, chat_id: int, task_id: str) -> int | None:
        return self._items.get((chat_id, task_id))

    def put(self, chat_id: int, task_id: str, message_id: int) -> None:
        self._items[(chat_id, task_id)] = message_id
        self._items.move_to_end((chat_id, task_id))
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, chat_id: int, task_id: str) -> int | None:
        return self._items.pop((chat_id, task_id), None)


@dataclass
class TelegramContext:
    """Shared state of one running front end, handed to every handler as `tg`."""

    http: httpx.AsyncClient
    packs: list[StarsPack]
    admin_ids: frozenset[str]
    default_language: str = "en"
    dedupe_ttl: float = 86400.0
    draft_interval: float = 0.5  # seconds between draft updates in a private chat
    edit_interval: float = 1.0  # seconds between edits in a group (Telegram allows ~1/s)
    max_image_bytes: int = 50 * 1024 * 1024
    pacer: ChatPacer = field(default_factory=ChatPacer)
    stops: StopBoard = field(default_factory=StopBoard)
    progress: ProgressBoard = field(default_factory=ProgressBoard)
