"""The chat path's store round trips: one before the hold (dedupe mark, who pays, in-flight
lease, model and history), one after the capture (history saved, lease freed). The first bets
that an identity pays from its own account; where the bet loses (a linked identity, a
redelivered message, a flow that never started) the lease it took is given back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.assemble import assemble
from bot.core import Core
from bot.events import FinalText, Notice, TextDelta
from bot.providers.midjourney import MidjourneyClient
from bot.providers.openai import OpenAIClient
from bot.store import open_store
from simulator import Simulator
from tests.core.conftest import ask, captures, fund, make_settings, message, of_type

STORE_CALLS = ("get", "get_many", "set", "add", "delete", "incr", "sadd", "srem", "smembers")


class Counting:
    """A Store that records each round trip made through it (a batch is one)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.trips: list[tuple[str, ...]] = []
        self.block_names: asyncio.Event | None = None  # reads of display names wait for it

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "batch":

            async def batch(ops: list[tuple]) -> list[Any]:
                self.trips.append(tuple(op[0] for op in ops))
                return await attr(ops)

            return batch
        if name in STORE_CALLS:

            async def call(*args: Any, **kw: Any) -> Any:
                self.trips.append((name,))
                if self.block_names is not None and str(args[0]).startswith("name:"):
                    await self.block_names.wait()
                return await attr(*args, **kw)

            return call
        return attr

    async def inflight(self) -> list[str]:
        """Every in-flight slot still taken."""
        keys = ["telegram:u1", "wechat:oW", "telegram:u2"]
        slots = [f"inflight:{k}:{n}" for k in keys for n in range(2)]
        return [k for k, v in zip(slots, await self.inner.get_many(slots), strict=True) if v]


@pytest.fixture
async def counted(
    sim: Simulator, sqlite_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Core, Counting]]:
    overrides = getattr(request, "param", {})
    store = Counting(await open_store(sqlite_url))
    openai = OpenAIClient(sim.openai_url, "sk-test", max_retries=1, backoff_base=0.01)
    mj = MidjourneyClient(sim.url, "")
    core = await assemble(
        make_settings(sqlite_url, sim, **overrides), store=store, openai=openai, mj=mj
    )
    yield core, store
    await core.close()
    await store.inner.close()
    await openai.close()
    await mj.close()


async def test_a_chat_message_makes_two_store_round_trips(counted: tuple[Core, Counting]) -> None:
    core, store = counted
    await fund(core, "telegram:u1", 100)
    for text in ("hello [[tokens:5]]", "again [[tokens:5]]"):
        store.trips.clear()
        assert of_type(await ask(core, text), FinalText)
        assert store.trips == [("add", "add", "get_many"), ("set", "delete")]
    assert await store.inflight() == []
    # A command: its dedupe mark and who pays, in one.
    store.trips.clear()
    assert of_type(await ask(core, "/balance"), FinalText)
    assert store.trips[0] == ("add", "get")


async def test_a_linked_identity_pays_from_its_account_and_holds_its_lease(
    counted: tuple[Core, Counting],
) -> None:
    core, store = counted
    await fund(core, "telegram:u1", 100)
    [code_msg] = await ask(core, "/link")
    code = code_msg.text.split("\n")[0].rsplit(" ", 1)[1]
    [linked] = await ask(core, f"/link {code}", user="oW", platform="wechat")
    assert "100 credits available" in linked.text

    store.trips.clear()
    events = await ask(core, "from wechat [[tokens:4]]", user="oW", platform="wechat")
    assert of_type(events, FinalText)
    # The bet on the identity's own account lost: its slot freed as the account's was taken.
    assert store.trips == [
        ("add", "add", "get_many"),
        ("delete", "add", "get_many"),
        ("set", "delete"),
    ]
    assert [c.meta["completion_tokens"] for c in await captures(core, "telegram:u1")] == [4]
    assert await store.inflight() == []

    # The account's one slot is shared by both identities: one request at a time.
    stop = asyncio.Event()
    slow = core.handle(message("slow [[fault:slow]]", "u1"), stop=stop)
    assert isinstance(await anext(slow), TextDelta)
    other = await ask(core, "me too", user="oW", platform="wechat")
    assert [(type(e), e.kind) for e in other] == [(Notice, "wait")]
    stop.set()
    assert of_type([e async for e in slow], FinalText)
    assert await store.inflight() == []


async def test_a_redelivered_message_takes_no_slot(counted: tuple[Core, Counting]) -> None:
    core, store = counted
    await fund(core, "telegram:u1", 100)
    msg = message("once [[tokens:3]]")
    assert of_type([e async for e in core.handle(msg)], FinalText)
    store.trips.clear()
    assert [e async for e in core.handle(msg)] == []
    assert store.trips == [("add", "add", "get_many"), ("delete",)]
    assert await store.inflight() == []

    # Redelivered while the first delivery is still answering: that one keeps its slot.
    stop = asyncio.Event()
    slow_msg = message("slow [[fault:slow]]")
    slow = core.handle(slow_msg, stop=stop)
    assert isinstance(await anext(slow), TextDelta)
    assert [e async for e in core.handle(slow_msg)] == []
    assert await store.inflight() == ["inflight:telegram:u1:0"]
    assert [(type(e), e.kind) for e in await ask(core, "new one")] == [(Notice, "wait")]
    stop.set()
    assert of_type([e async for e in slow], FinalText)
    assert await store.inflight() == []
    assert len(await captures(core, "telegram:u1")) == 2


async def test_a_flow_cancelled_before_it_started_frees_its_slot(
    counted: tuple[Core, Counting],
) -> None:
    """The lease is taken in the first round trip, before the flow that frees it has started:
    handle() frees it itself when it is cancelled in between (here: recording a name)."""
    core, store = counted
    await fund(core, "telegram:u1", 100)
    store.block_names = asyncio.Event()
    named = message("hi", user_name="Ann")

    async def consume() -> list[Any]:
        return [e async for e in core.handle(named)]

    task = asyncio.create_task(consume())
    for _ in range(100):
        if await store.inflight():
            break
        await asyncio.sleep(0.01)
    assert await store.inflight() == ["inflight:telegram:u1:0"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await store.inflight() == []
    store.block_names.set()
    assert of_type(await ask(core, "next [[tokens:2]]"), FinalText)
    assert (await core.wallet.balance("telegram:u1")).held == 0


@pytest.mark.parametrize("counted", [{"max_inflight_per_user": 2}], indirect=True)
async def test_a_second_slot_is_taken_when_the_first_is_busy(
    counted: tuple[Core, Counting],
) -> None:
    core, store = counted
    await fund(core, "telegram:u1", 100)
    stop = asyncio.Event()
    slow = core.handle(message("slow [[fault:slow]]"), stop=stop)
    assert isinstance(await anext(slow), TextDelta)
    store.trips.clear()
    assert of_type(await ask(core, "quick [[tokens:2]]"), FinalText)
    assert store.trips == [("add", "add", "get_many"), ("add",), ("set", "delete")]
    stop.set()
    assert of_type([e async for e in slow], FinalText)
    assert await store.inflight() == []
