"""Fixtures: the fake Bot API server, a front end on it, a real core on the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web

from adapters.telegram.context import TelegramContext
from adapters.telegram.frontend import TelegramFrontEnd, admin_ids
from adapters.telegram.stars import parse_packs
from billing.money import MILLI_PER_CREDIT
from bot.events import Delivery, Event, Message
from bot.scheduler import Scheduler
from bot.settings import Settings
from bot.store.base import Store
from fakes.telegram_api import TOKEN, FakeBotAPI

ADMIN = 4242


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeBotAPI]:
    api = await FakeBotAPI().start()
    yield api
    await api.close()


def make_settings(fake_api: FakeBotAPI, wallet_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": TOKEN,
        "telegram_api_base": fake_api.url,
        "wallet_url": wallet_url,
        "admin_ids": [f"telegram:{ADMIN}"],
        "telegram_stars_packs": "50:10000,250:55000",
        "mj_poll_min_seconds": 0.05,
        "mj_poll_max_seconds": 0.1,
        "sweep_interval_seconds": 3600,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def make_frontend(
    core: Any, settings: Settings, app: web.Application | None = None, **tg: Any
) -> TelegramFrontEnd:
    """A front end whose Bot talks to the fake API; `tg` overrides pacing for a test."""
    bot = Bot(
        settings.telegram_bot_token,
        session=AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_base)),
    )
    context = TelegramContext(
        http=httpx.AsyncClient(timeout=10.0),
        packs=parse_packs(settings.telegram_stars_packs),
        admin_ids=admin_ids(settings),
        **tg,
    )
    return TelegramFrontEnd(core, settings, app, bot=bot, tg=context)


@dataclass
class FakeCore:
    """Yields scripted events for a text: for rendering tests where the model's words matter."""

    kv: Store
    script: dict[str, list[Event | float]] = field(default_factory=dict)
    seen: list[Message] = field(default_factory=list)
    stops: list[asyncio.Event | None] = field(default_factory=list)
    scheduler: Scheduler = field(default_factory=Scheduler)  # never started
    sink: Callable[[Delivery], Awaitable[None]] | None = None

    async def handle(self, msg: Message, *, stop: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
        self.seen.append(msg)
        self.stops.append(stop)
        for item in self.script.get(msg.text, []):
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            yield item

    async def press(self, *a: Any, **kw: Any):  # type: ignore[no-untyped-def]
        return
        yield

    def set_sink(self, platform: str, sink: Callable[[Delivery], Awaitable[None]]) -> None:
        self.sink = sink

    async def retry_stars(self) -> int:
        return 0  # no Stars payments here


class MemoryStore:
    """The Store protocol in a dict, for the scripted core (the real core uses SQLite)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sets: dict[str, set[str]] = {}

    async def get(self, key: str) -> str | None:
        return self.data.get(key)

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self.data[key] = value

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        if key in self.data:
            return False
        self.data[key] = value
        return True

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def delete_if(self, key: str, value: str) -> bool:
        if self.data.get(key) != value:
            return False
        del self.data[key]
        return True

    async def incr(self, key: str, ttl: float | None = None) -> int:
        self.data[key] = str(int(self.data.get(key, "0")) + 1)
        return int(self.data[key])

    async def sadd(self, name: str, member: str) -> None:
        self.sets.setdefault(name, set()).add(member)

    async def srem(self, name: str, member: str) -> None:
        self.sets.get(name, set()).discard(member)

    async def smembers(self, name: str) -> set[str]:
        return set(self.sets.get(name, set()))

    async def close(self) -> None:
        pass


@pytest.fixture
def fake_core() -> FakeCore:
    return FakeCore(MemoryStore())


@pytest.fixture
async def fake_frontend(fake_api: FakeBotAPI, fake_core: FakeCore, sqlite_url: str):  # type: ignore[no-untyped-def]
    fe = make_frontend(fake_core, make_settings(fake_api, sqlite_url))
    yield fe
    await fe.stop()


@pytest.fixture
async def simulator():  # type: ignore[no-untyped-def]
    from simulator import start_simulator

    sim = await start_simulator(mj_duration=0.2)
    yield sim
    await sim.close()


@pytest.fixture
async def real(fake_api: FakeBotAPI, simulator: Any, sqlite_url: str):  # type: ignore[no-untyped-def]
    """The real core on a SQLite wallet and the simulated upstream, with its front end."""
    from bot.assemble import assemble

    settings = make_settings(
        fake_api,
        sqlite_url,
        openai_base_url=simulator.openai_url,
        openai_api_key="sk-test",
        mj_base_url=simulator.url,
    )
    core = await assemble(settings)
    await core.start()
    fe = make_frontend(core, settings)
    yield fe
    await fe.stop()
    await core.close()


async def fund(core: Any, user_id: int, credits: int) -> None:
    account = await core.account_of("telegram", str(user_id))
    await core.wallet.credit(account, credits * MILLI_PER_CREDIT, f"fund:{user_id}", "test")


async def available(core: Any, user_id: int) -> int:
    account = await core.account_of("telegram", str(user_id))
    return (await core.wallet.balance(account)).available
