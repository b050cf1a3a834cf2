"""A chat message's in-flight slot after a store round trip that failed or was cancelled at an
unlucky moment: the store may have applied it, so the request does not know whether the slot
is its own. It frees the slot by its token: the account is free again at once (not "please
wait" for the lease's 180 s), and a slot another request holds is never freed by it.

Each test runs on a real store (SQLite file, PostgreSQL, Redis) wrapped in `Unlucky`, which
makes chosen round trips go wrong after (or before) the real store ran them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bot import limits
from bot.assemble import assemble
from bot.core import Core
from bot.events import FinalText, Notice, TextDelta
from bot.providers.midjourney import MidjourneyClient
from bot.providers.openai import OpenAIClient
from bot.store import open_store
from simulator import Simulator
from tests.core.conftest import ask, fund, make_settings, message, of_type

SLOT = "inflight:telegram:u1:0"


class Lost(ConnectionError):
    """The connection went away: the command may or may not have run."""


class Unlucky:
    """A Store whose planned round trips go wrong. A plan entry `(mode, op, key)` hits the next
    round trip (a batch, or a lone `add`) with an op `op` on `key`:
    - "hang": the real store runs it, then the call waits until it is cancelled;
    - "raise": the real store runs it, then the call raises `Lost`;
    - "refuse": the call raises `Lost` before reaching the store;
    - "stall": the call waits for `unstall`, then runs on the real store.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.plan: list[tuple[str, str, str]] = []
        self.hanging = 0  # round trips waiting to be cancelled
        self.unstall = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _planned(self, ops: list[tuple]) -> str | None:
        for i, (mode, name, key) in enumerate(self.plan):
            if any(op[0] == name and op[1] == key for op in ops):
                del self.plan[i]
                return mode
        return None

    async def _go(self, ops: list[tuple], real: Callable[[], Awaitable[Any]]) -> Any:
        mode = self._planned(ops)
        if mode == "refuse":
            raise Lost("connection lost before the command was sent")
        if mode == "stall":
            await self.unstall.wait()
        result = await real()
        if mode == "hang":
            self.hanging += 1
            await asyncio.Event().wait()
        if mode == "raise":
            raise Lost("connection lost after the command was sent")
        return result

    async def batch(self, ops: list[tuple]) -> list[Any]:
        return await self._go(ops, lambda: self.inner.batch(ops))

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        return await self._go([("add", key)], lambda: self.inner.add(key, value, ttl))

    async def until_hanging(self, count: int) -> None:
        for _ in range(500):
            if self.hanging >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} round trip(s) never got in flight")

    async def inflight(self) -> list[str]:
        """Every in-flight slot still taken."""
        slots = [f"inflight:{k}:{n}" for k in ("telegram:u1", "wechat:oW") for n in range(2)]
        return [k for k, v in zip(slots, await self.inner.get_many(slots), strict=True) if v]


MakeUnlucky = Callable[..., Awaitable[tuple[Core, Unlucky]]]


@pytest.fixture
async def make_unlucky(sim: Simulator, store_url: str) -> AsyncIterator[MakeUnlucky]:
    """A real Core on `store_url` (the wallet too) whose store is wrapped in `Unlucky`."""
    made: list[tuple[Core, Unlucky, list[Any]]] = []

    async def make(**overrides: Any) -> tuple[Core, Unlucky]:
        store = Unlucky(await open_store(store_url))
        openai = OpenAIClient(sim.openai_url, "sk-test", max_retries=1, backoff_base=0.01)
        mj = MidjourneyClient(sim.url, "")
        settings = make_settings(store_url, sim, **overrides)
        core = await assemble(settings, store=store, openai=openai, mj=mj)
        made.append((core, store, [openai, mj]))
        await fund(core, "telegram:u1", 100)
        return core, store

    yield make
    for core, store, clients in reversed(made):
        await core.close()
        await store.inner.close()
        for client in clients:
            await client.close()


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def waits(events: list[Any]) -> bool:
    return [(type(e), getattr(e, "kind", None)) for e in events] == [(Notice, "wait")]


async def test_a_message_cancelled_in_its_first_round_trip_leaves_the_account_free(
    make_unlucky: MakeUnlucky,
) -> None:
    core, store = await make_unlucky()
    store.plan = [("hang", "add", SLOT)]
    first = asyncio.create_task(ask(core, "hello"))
    await store.until_hanging(1)
    assert await store.inflight() == [SLOT]  # the slot was taken; the request cannot know
    await cancelled(first)
    assert await store.inflight() == []
    assert of_type(await ask(core, "next [[tokens:2]]"), FinalText)
    assert (await core.wallet.balance("telegram:u1")).held == 0


async def test_a_store_error_in_the_first_round_trip_leaves_the_account_free(
    make_unlucky: MakeUnlucky,
) -> None:
    core, store = await make_unlucky()
    store.plan = [("raise", "add", SLOT)]
    with pytest.raises(Lost):
        await ask(core, "hello")
    assert await store.inflight() == []
    assert of_type(await ask(core, "next [[tokens:2]]"), FinalText)


async def test_a_slow_freeing_does_not_hold_up_the_cancellation(
    make_unlucky: MakeUnlucky, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is slow to answer the freeing: the cancelled request waits only
    FREE_WAIT_SECONDS for it, and the slot is freed in the background when the store answers."""
    monkeypatch.setattr(limits, "FREE_WAIT_SECONDS", 0.2)
    core, store = await make_unlucky()
    store.plan = [("hang", "add", SLOT), ("stall", "delete_if", SLOT)]
    first = asyncio.create_task(ask(core, "hello"))
    await store.until_hanging(1)
    first.cancel()
    done, _ = await asyncio.wait([first], timeout=2)
    assert done == {first} and first.cancelled()
    assert await store.inflight() == [SLOT]
    store.unstall.set()
    for _ in range(200):
        if not await store.inflight():
            break
        await asyncio.sleep(0.01)
    assert await store.inflight() == []
    assert of_type(await ask(core, "next [[tokens:2]]"), FinalText)


async def test_a_cancelled_loser_never_frees_the_slot_another_request_holds(
    make_unlucky: MakeUnlucky,
) -> None:
    """Two messages in flight at once: the second's `add` lost. Its cleanup leaves the first's
    slot alone (a blind delete would let a third message run beside the first)."""
    core, store = await make_unlucky()
    store.plan = [("hang", "add", SLOT), ("hang", "add", SLOT)]
    winner = asyncio.create_task(ask(core, "first"))
    await store.until_hanging(1)
    token = await store.inner.get(SLOT)
    assert token is not None
    loser = asyncio.create_task(ask(core, "second"))
    await store.until_hanging(2)
    await cancelled(loser)
    assert await store.inner.get(SLOT) == token
    assert waits(await ask(core, "third"))
    await cancelled(winner)
    assert await store.inflight() == []
    assert of_type(await ask(core, "fourth [[tokens:2]]"), FinalText)


@pytest.mark.parametrize("mode", ["hang", "raise"])
async def test_a_second_slot_taken_at_an_unlucky_moment_is_freed(
    make_unlucky: MakeUnlucky, mode: str
) -> None:
    """MAX_INFLIGHT_PER_USER=2: the second slot is taken in a round trip of its own
    (`acquire_more`); a failure there frees it, and only it."""
    core, store = await make_unlucky(max_inflight_per_user=2)
    stop = asyncio.Event()
    slow = core.handle(message("slow [[fault:slow]]"), stop=stop)
    assert isinstance(await anext(slow), TextDelta)
    token = await store.inner.get(SLOT)
    second = "inflight:telegram:u1:1"
    store.plan = [(mode, "add", second)]
    quick = asyncio.create_task(ask(core, "quick"))
    if mode == "hang":
        await store.until_hanging(1)
        assert await store.inflight() == [SLOT, second]
        await cancelled(quick)
    else:
        with pytest.raises(Lost):
            await quick
    assert await store.inflight() == [SLOT]
    assert await store.inner.get(SLOT) == token
    assert of_type(await ask(core, "again [[tokens:2]]"), FinalText)
    stop.set()
    assert of_type([e async for e in slow], FinalText)
    assert await store.inflight() == []


@pytest.mark.parametrize("mode", ["hang", "refuse"])
async def test_a_linked_identity_frees_both_slots_when_its_second_round_trip_fails(
    make_unlucky: MakeUnlucky, mode: str
) -> None:
    """A linked identity's second round trip gives back its own slot and takes the account's
    (`acquire_and_read`). Cancelled after the store ran it, the account's slot is freed;
    refused before, the identity's slot (still taken) is freed."""
    core, store = await make_unlucky()
    [code_msg] = await ask(core, "/link")
    code = code_msg.text.split("\n")[0].rsplit(" ", 1)[1]
    [linked] = await ask(core, f"/link {code}", user="oW", platform="wechat")
    assert "100 credits available" in linked.text

    store.plan = [(mode, "add", SLOT)]
    from_wechat = asyncio.create_task(ask(core, "hi", user="oW", platform="wechat"))
    if mode == "hang":
        await store.until_hanging(1)
        assert await store.inflight() == [SLOT]
        await cancelled(from_wechat)
    else:
        with pytest.raises(Lost):
            await from_wechat
    assert await store.inflight() == []
    events = await ask(core, "again [[tokens:2]]", user="oW", platform="wechat")
    assert of_type(events, FinalText)
    assert of_type(await ask(core, "me [[tokens:2]]"), FinalText)


async def test_a_slot_whose_release_failed_is_freed(make_unlucky: MakeUnlucky) -> None:
    """The last round trip (the history saved, the slot freed) never reached the store: the
    slot is freed by its token instead of staying taken for the lease's TTL."""
    core, store = await make_unlucky()
    store.plan = [("refuse", "delete", SLOT)]
    events: list[Any] = []
    with pytest.raises(Lost):
        async for event in core.handle(message("hello [[tokens:3]]")):
            events.append(event)
    assert of_type(events, FinalText)
    assert await store.inflight() == []
    assert of_type(await ask(core, "next [[tokens:2]]"), FinalText)


# --- the message's dedupe mark, written in the same first round trip -----------------------


async def _answer(core: Core, msg: Any) -> list[Any]:
    return [event async for event in core.handle(msg)]


@pytest.mark.parametrize("mode", ["raise", "hang"])
@pytest.mark.parametrize("text", ["hello [[tokens:2]]", "/balance"])
async def test_a_message_whose_first_round_trip_failed_is_answered_when_redelivered(
    make_unlucky: MakeUnlucky, mode: str, text: str
) -> None:
    core, store = await make_unlucky()
    msg = message(text)
    mark = f"seen:telegram:{msg.message_id}"
    store.plan = [(mode, "add", mark)]
    first = asyncio.create_task(_answer(core, msg))
    if mode == "hang":
        await store.until_hanging(1)
        await cancelled(first)
    else:
        with pytest.raises(Lost):
            await first
    assert await store.inner.get(mark) is None  # the store had applied it; it was taken back
    again = await _answer(core, msg)  # the platform delivers the unanswered message again
    assert of_type(again, FinalText) or of_type(again, Notice)
    assert await _answer(core, msg) == []  # answered now: a third delivery is dropped


async def test_a_failed_delivery_does_not_take_back_the_mark_of_the_one_that_answered(
    make_unlucky: MakeUnlucky,
) -> None:
    core, store = await make_unlucky()
    msg = message("hello [[tokens:2]]")
    mark = f"seen:telegram:{msg.message_id}"
    assert of_type(await _answer(core, msg), FinalText)
    store.plan = [("raise", "add", mark)]  # a redelivery whose round trip then fails
    with pytest.raises(Lost):
        await _answer(core, msg)
    assert await store.inner.get(mark) is not None
    assert await _answer(core, msg) == []  # still answered once
    assert len([e for e in await core.wallet.entries("telegram:u1") if e.kind == "capture"]) == 1
