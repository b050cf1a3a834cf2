"""Background work: the sweeper returns stranded credit, notifyHook speeds a task up."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestServer

from adapters.http import build_app
from bot.events import ImageResult
from fakes.services import free_port
from tests.core.conftest import PRICES, MakeCore, ask, captures, fund, of_type

ACCOUNT = "telegram:u1"


async def test_sweeper_voids_holds_left_by_a_crash(make_core: MakeCore, sqlite_url: str) -> None:
    core = await make_core(sqlite_url)
    await fund(core, ACCOUNT, 10)
    await core.wallet.hold(ACCOUNT, 4000, "crashed-request", ttl=0.05)
    assert (await core.wallet.balance(ACCOUNT)).available == 6000
    await asyncio.sleep(0.1)
    assert await core.sweeper.tick() == 1
    balance = await core.wallet.balance(ACCOUNT)
    assert (balance.total, balance.held) == (10_000, 0)


async def test_the_sweeper_runs_on_the_cores_one_scheduler(
    make_core: MakeCore, sqlite_url: str
) -> None:
    core = await make_core(sqlite_url, sweep_interval_seconds=1)
    assert core.scheduler.running and core.scheduler.jobs == ["sweeper"]
    await fund(core, ACCOUNT, 10)
    await core.wallet.hold(ACCOUNT, 4000, "crashed-request", ttl=0.05)
    for _ in range(250):  # voided by the scheduled sweeper (within a second), not by hand
        if (await core.wallet.balance(ACCOUNT)).held == 0:
            break
        await asyncio.sleep(0.02)
    assert (await core.wallet.balance(ACCOUNT)).available == 10_000
    await core.scheduler.stop()
    assert not core.scheduler.running


async def test_notify_hook_makes_the_bot_look_at_once(make_core: MakeCore, sqlite_url: str) -> None:
    port = free_port()
    # Polling every 30 s: without the notification the image would take half a minute.
    core = await make_core(
        sqlite_url,
        mj_poll_min_seconds=30,
        mj_poll_max_seconds=30,
        mj_notify_url=f"http://127.0.0.1:{port}/mj/notify",
    )
    server = TestServer(build_app(core), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        await fund(core, ACCOUNT, 5000)
        # Without the notification this would wait out the 30 s poll and time out.
        events = await asyncio.wait_for(ask(core, "/imagine a fast cat"), timeout=20)
        assert of_type(events, ImageResult)
        [entry] = await captures(core, ACCOUNT)
        assert entry.amount == -PRICES.image_cost("imagine")
    finally:
        await server.close()
