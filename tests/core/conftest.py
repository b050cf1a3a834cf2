"""The core end to end: a real Core on a real store, against the simulator over real HTTP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from billing.pricing import PriceList
from billing.tokens import count_messages
from billing.wallet.base import CAPTURE, CREDIT, Entry
from bot.assemble import assemble
from bot.core import Core
from bot.events import Event, Message
from bot.providers.midjourney import MidjourneyClient
from bot.providers.openai import OpenAIClient
from bot.settings import Settings
from simulator import Simulator, start_simulator

PRICES = PriceList.load()
SYSTEM = "You are a helpful assistant."
_ids = itertools.count(1)


def prompt_tokens(model: str, *texts: str, history: list[dict[str, str]] | None = None) -> int:
    """Our exact count of system + history + the new message (what the simulator reports)."""
    messages = [{"role": "system", "content": SYSTEM}, *(history or [])]
    messages += [{"role": "user", "content": text} for text in texts]
    return count_messages(PRICES.get(model), messages)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = await start_simulator(mj_duration=0.3)
    yield simulator
    await simulator.close()


def make_settings(url: str, sim: Simulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "wallet_url": url,
        "openai_base_url": sim.openai_url,
        "openai_api_key": "sk-test",
        "mj_base_url": sim.url,
        "mj_poll_min_seconds": 0.02,
        "mj_poll_max_seconds": 0.05,
        "sweep_interval_seconds": 3600,
        "system_prompt": SYSTEM,
        "admin_ids": ["telegram:admin"],
        "default_language": "en",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


MakeCore = Callable[..., Awaitable[Core]]


@pytest.fixture
async def make_core(sim: Simulator) -> AsyncIterator[MakeCore]:
    """Build (and later close) cores; `url` defaults to a SQLite file of this test."""
    made: list[tuple[Core, list[Any]]] = []

    async def make(url: str, *, simulator: Simulator | None = None, **overrides: Any) -> Core:
        upstream = simulator or sim
        settings = make_settings(url, upstream, **overrides)
        openai = OpenAIClient(
            upstream.openai_url, "sk-test", max_retries=1, backoff_base=0.01, backoff_max=0.02
        )
        mj = MidjourneyClient(upstream.url, "")
        core = await assemble(settings, openai=openai, mj=mj)
        await core.start()
        made.append((core, [openai, mj]))
        return core

    yield make
    for core, clients in reversed(made):
        await core.close()
        for client in clients:
            await client.close()


@pytest.fixture
async def core(make_core: MakeCore, sqlite_url: str) -> Core:
    return await make_core(sqlite_url)


def message(text: str, user: str = "u1", *, platform: str = "telegram", **kw: Any) -> Message:
    kw.setdefault("message_id", f"m{next(_ids)}")
    return Message(platform=platform, user_id=user, chat_id=user, text=text, **kw)


async def ask(core: Core, text: str, user: str = "u1", **kw: Any) -> list[Event]:
    """Send one message and collect everything the core yields."""
    stop = kw.pop("stop", None)
    return [event async for event in core.handle(message(text, user, **kw), stop=stop)]


async def fund(core: Core, account: str, credits: int) -> None:
    await core.wallet.credit(account, credits * 1000, f"fund:{account}:{next(_ids)}", "test")


async def captures(core: Core, account: str) -> list[Entry]:
    return [e for e in await core.wallet.entries(account, limit=500) if e.kind == CAPTURE]


async def credits_of(core: Core, account: str) -> list[Entry]:
    return [e for e in await core.wallet.entries(account, limit=500) if e.kind == CREDIT]


def of_type(events: list[Event], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]
