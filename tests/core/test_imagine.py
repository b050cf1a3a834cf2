"""/imagine and its buttons: held on submit, charged once on success, never on failure."""

from __future__ import annotations

import asyncio
import json
import time

from bot.core import Core
from bot.events import Delivery, ImageResult, Notice, Progress
from bot.store import open_store
from fakes.clock import Clock
from simulator import Simulator, start_simulator
from tests.core.conftest import PRICES, MakeCore, ask, captures, fund, message, of_type

ACCOUNT = "telegram:u1"
IMAGINE = PRICES.image_cost("imagine")


async def settled(core: Core, account: str) -> tuple[int, int]:
    balance = await core.wallet.balance(account)
    return balance.total, balance.held


async def test_imagine_success_is_charged_once_with_buttons(core: Core) -> None:
    await fund(core, ACCOUNT, 5000)
    events = await ask(core, "/imagine a red fox in the snow")
    assert isinstance(events[0], Notice) and "reserved" in events[0].text
    assert of_type(events, Progress)
    [result] = of_type(events, ImageResult)
    assert result.url.startswith("http")
    labels = [a.label for a in result.actions]
    assert labels == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", "🔄"]
    assert result.actions[0].data == f"mj:{result.task_id}:U1"
    assert all(len(a.data.encode()) <= 64 for a in result.actions)
    [entry] = await captures(core, ACCOUNT)
    assert entry.amount == -IMAGINE == -2_000_000
    assert entry.meta == {"model": "midjourney", "action": "IMAGINE", "task_id": result.task_id}
    assert await settled(core, ACCOUNT) == (5_000_000 - IMAGINE, 0)


async def test_imagine_failure_charges_nothing(core: Core) -> None:
    await fund(core, ACCOUNT, 5000)
    events = await ask(core, "/imagine a cat [[fault:fail]]")
    assert not of_type(events, ImageResult)
    assert "could not be made" in events[-1].text
    assert await captures(core, ACCOUNT) == []
    assert await settled(core, ACCOUNT) == (5_000_000, 0)


async def test_imagine_timeout_voids_the_hold(make_core: MakeCore, sqlite_url: str) -> None:
    core = await make_core(sqlite_url, mj_task_timeout_seconds=1)
    await fund(core, ACCOUNT, 5000)
    events = await ask(core, "/imagine a very slow cat [[fault:slow]]")
    assert "too long" in events[-1].text
    assert await captures(core, ACCOUNT) == []
    assert await settled(core, ACCOUNT) == (5_000_000, 0)


async def test_refused_submits_void_the_hold(core: Core) -> None:
    await fund(core, ACCOUNT, 5000)
    banned = await ask(core, "/imagine something [[fault:banned]]")
    full = await ask(core, "/imagine something [[fault:queue_full]]")
    assert [e.kind for e in banned + full] == ["error", "error"]
    assert "banned" in banned[0].text and "queue is full" in full[0].text
    assert await settled(core, ACCOUNT) == (5_000_000, 0)


async def test_insufficient_credits_for_an_image(core: Core) -> None:
    await fund(core, ACCOUNT, 1999)
    [notice] = await ask(core, "/imagine a cat")
    assert notice.kind == "insufficient" and "2000" in notice.text
    assert await settled(core, ACCOUNT) == (1_999_000, 0)


async def test_code_21_is_never_charged_twice(core: Core) -> None:
    await fund(core, ACCOUNT, 5000)
    first = await ask(core, "/imagine the same lighthouse [[fault:exists]]")
    second = await ask(core, "/imagine the same lighthouse [[fault:exists]]")
    [one] = of_type(first, ImageResult)
    [two] = of_type(second, ImageResult)
    assert one.task_id == two.task_id
    assert "not be charged twice" in second[0].text
    assert len(await captures(core, ACCOUNT)) == 1
    assert await settled(core, ACCOUNT) == (5_000_000 - IMAGINE, 0)


async def test_buttons_run_for_their_owner_and_refuse_others(core: Core) -> None:
    await fund(core, ACCOUNT, 10_000)
    await fund(core, "telegram:u2", 10_000)
    [image] = of_type(await ask(core, "/imagine a harbour at dawn"), ImageResult)
    u1 = image.actions[0].data

    stranger = [e async for e in core.press("telegram", "u2", "u2", u1, message_id="cb1")]
    assert [e.kind for e in stranger] == ["error"] and "someone else" in stranger[0].text
    stale = [e async for e in core.press("telegram", "u1", "u1", "mj:404:U1", message_id="cb2")]
    assert "expired" in stale[0].text
    assert await settled(core, "telegram:u2") == (10_000_000, 0)

    upscale = [e async for e in core.press("telegram", "u1", "u1", u1, message_id="cb3")]
    [big] = of_type(upscale, ImageResult)
    assert big.actions == ()
    variation = [
        e async for e in core.press("telegram", "u1", "u1", image.actions[4].data, message_id="cb4")
    ]
    assert len(of_type(variation, ImageResult)[0].actions) == 9
    charged = IMAGINE + PRICES.image_cost("upscale") + PRICES.image_cost("variation")
    assert [e.meta["action"] for e in await captures(core, ACCOUNT)] == ["V1", "U1", "IMAGINE"]
    assert await settled(core, ACCOUNT) == (10_000_000 - charged, 0)


async def test_restart_resumes_and_settles_exactly_once(
    make_core: MakeCore, sqlite_url: str
) -> None:
    clock = Clock()
    slow = await start_simulator(mj_duration=1.5, clock=clock)
    try:
        first = await make_core(sqlite_url, simulator=slow)
        await fund(first, ACCOUNT, 5000)
        events = first.handle(message("/imagine a mountain lake"))
        submitted = await anext(events)
        assert "reserved" in submitted.text
        await events.aclose()  # the adapter went away...
        await first.close()  # ...and the process stopped before the image was done
        assert await settled(first, ACCOUNT) == (5_000_000, IMAGINE)  # closed: read the db
    except BaseException:
        await slow.close()
        raise
    try:
        clock.advance(1.6)  # the image finishes while the bot is down
        second = await make_core(sqlite_url, simulator=slow)  # start() settles it at once
        delivered: list[Delivery] = []

        async def sink(delivery: Delivery) -> None:
            delivered.append(delivery)

        second.set_sink("telegram", sink)  # set after start(): the result waited for it
        for _ in range(100):
            if delivered:
                break
            await asyncio.sleep(0.05)
        [delivery] = delivered
        assert (delivery.platform, delivery.user_id, delivery.chat_id) == ("telegram", "u1", "u1")
        assert isinstance(delivery.event, ImageResult)
        assert await settled(second, ACCOUNT) == (5_000_000 - IMAGINE, 0)
        third = await make_core(sqlite_url, simulator=slow)  # another restart: nothing left
        third.set_sink("telegram", sink)
        await asyncio.sleep(0.3)
        assert len(delivered) == 1
        assert len(await captures(third, ACCOUNT)) == 1
    finally:
        await slow.close()


async def test_notify_hook_only_triggers_a_refetch(core: Core, sim: Simulator) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from adapters.http import build_app

    await fund(core, ACCOUNT, 5000)
    client = TestClient(TestServer(build_app(core)))
    await client.start_server()
    try:
        resp = await client.post("/mj/notify", json={"id": "nope", "status": "SUCCESS"})
        assert (await resp.json()) == {"ok": True, "tracked": False}
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()
    assert await settled(core, ACCOUNT) == (5_000_000, 0)  # a forged SUCCESS bills nothing


async def test_images_settle_once_on_every_backend(make_core: MakeCore, store_url: str) -> None:
    core = await make_core(store_url)
    await fund(core, ACCOUNT, 7000)
    assert of_type(await ask(core, "/imagine a quiet street"), ImageResult)
    assert not of_type(await ask(core, "/imagine a storm [[fault:fail]]"), ImageResult)
    again = await ask(core, "/imagine twice [[fault:exists]]")
    twice = await ask(core, "/imagine twice [[fault:exists]]")
    assert of_type(again, ImageResult)[0].task_id == of_type(twice, ImageResult)[0].task_id
    assert len(await captures(core, ACCOUNT)) == 2
    assert await settled(core, ACCOUNT) == (7_000_000 - 2 * IMAGINE, 0)


async def test_image_finished_while_the_bot_was_down_past_the_deadline_is_delivered(
    make_core: MakeCore, sqlite_url: str
) -> None:
    """The deadline voids only unfinished tasks: a finished one is fetched and delivered."""
    clock = Clock()
    slow = await start_simulator(mj_duration=0.5, clock=clock)
    try:
        first = await make_core(sqlite_url, simulator=slow, mj_task_timeout_seconds=60)
        await fund(first, ACCOUNT, 5000)
        events = first.handle(message("/imagine a lighthouse"))
        assert "reserved" in (await anext(events)).text
        await events.aclose()
        [task_id] = await first.kv.smembers("mj:open")
        await first.close()
        clock.advance(0.7)  # the image finishes while the bot is down...
        store = await open_store(sqlite_url)
        raw = json.loads(await store.get(f"mj:task:{task_id}"))
        raw["created_at"] = time.time() - 3600  # ...and the bot comes back after its deadline
        await store.set(f"mj:task:{task_id}", json.dumps(raw))
        await store.close()
        second = await make_core(sqlite_url, simulator=slow, mj_task_timeout_seconds=60)
        delivered: list[Delivery] = []

        async def sink(delivery: Delivery) -> None:
            delivered.append(delivery)

        second.set_sink("telegram", sink)
        for _ in range(100):
            if delivered:
                break
            await asyncio.sleep(0.05)
        [delivery] = delivered
        assert isinstance(delivery.event, ImageResult)
        assert await settled(second, ACCOUNT) == (5_000_000 - IMAGINE, 0)
    finally:
        await slow.close()


class HoldThatLands:
    """A wallet whose hold commits a moment after the caller may already have gone."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.started = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def hold(self, *args: object, **kw: object) -> object:
        self.started.set()
        # Like the SQLite writer thread or a Redis script: once sent, it commits anyway.
        return await asyncio.shield(asyncio.ensure_future(self._land(*args, **kw)))

    async def _land(self, *args: object, **kw: object) -> object:
        await asyncio.sleep(0.05)
        return await self.inner.hold(*args, **kw)  # type: ignore[attr-defined]


async def until_nothing_held(core: Core, account: str) -> int:
    for _ in range(50):
        if (await core.wallet.balance(account)).held == 0:
            break
        await asyncio.sleep(0.02)
    return (await core.wallet.balance(account)).held


async def test_imagine_cancelled_while_holding_leaves_no_hold(core: Core) -> None:
    await fund(core, ACCOUNT, 5000)
    wallet = HoldThatLands(core.services.wallet)
    core.services.wallet = wallet  # type: ignore[assignment]
    job = asyncio.create_task(ask(core, "/imagine a harbour at dawn"))
    await wallet.started.wait()
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    assert await until_nothing_held(core, ACCOUNT) == 0
    assert await settled(core, ACCOUNT) == (5_000_000, 0)


async def test_imagine_store_error_before_the_task_is_recorded_voids_the_hold(
    core: Core, monkeypatch
) -> None:
    await fund(core, ACCOUNT, 5000)
    add = core.kv.add

    async def failing_add(key: str, *args: object, **kw: object) -> bool:
        if key.startswith("mj:task:"):
            raise ConnectionError("store went away")
        return await add(key, *args, **kw)

    monkeypatch.setattr(core.kv, "add", failing_add)
    try:
        await ask(core, "/imagine a bridge in fog")
    except ConnectionError:
        pass
    assert await settled(core, ACCOUNT) == (5_000_000, 0)
