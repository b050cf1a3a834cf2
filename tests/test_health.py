"""/healthz: every part named, 503 while one is down, no business figures, cheap to ask."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from adapters.http import HEALTH_KEY, build_app, install_front_ends, watch_front_ends
from bot.assemble import assemble
from bot.core import Core
from bot.health import Check, Health, Status, read_probe
from bot.providers.midjourney import MidjourneyClient
from bot.providers.openai import OpenAIClient, UpstreamError, UpstreamUnavailable
from bot.settings import Settings
from fakes.openai import Error, Stream, fake_openai
from fakes.server import serve
from fakes.telegram_api import TOKEN, FakeBotAPI

UNREACHABLE = "http://api.telegram.invalid"


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until `condition()` holds; fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if condition():
            return
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


# --- the registry ---------------------------------------------------------------------------


async def test_report_names_every_part_and_is_down_when_one_is() -> None:
    health = Health()
    up, down = Status("a", ok=True), Status("b", ok=False, detail="unreachable")
    health.add("a", up)
    health.add("b", down)
    assert await health.report() == (
        False,
        {"a": {"status": "ok"}, "b": {"status": "down", "detail": "unreachable"}},
    )


async def test_a_failing_or_slow_probe_is_down_and_says_little() -> None:
    async def broken() -> Check:
        raise ConnectionRefusedError("postgresql://user:secret@db/creditbot refused")

    async def slow() -> Check:
        await asyncio.sleep(10)
        return Check(True)

    health = Health(timeout=0.05)
    health.add("store", broken)
    health.add("wallet", slow)
    healthy, checks = await health.report()
    assert not healthy
    assert checks["store"] == {"status": "down", "detail": "ConnectionRefusedError"}
    assert checks["wallet"] == {"status": "down", "detail": "no answer within 0.05 s"}


async def test_one_report_serves_every_caller_for_a_moment() -> None:
    reads = 0

    async def read() -> None:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.02)

    health = Health(ttl=60)
    health.add("store", read_probe(read))
    results = await asyncio.gather(*(health.report() for _ in range(20)))
    assert reads == 1 and all(r == (True, {"store": {"status": "ok"}}) for r in results)
    await health.report()
    assert reads == 1


async def test_a_down_status_is_rechecked_now_and_then_in_the_background() -> None:
    calls = 0
    status: Status

    async def recheck() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            status.up("reachable")

    status = Status("upstream", ok=False, detail="unreachable", recheck=recheck, every=0.05)
    health = Health(ttl=0)
    health.add("upstream", status)
    assert (await health.report())[0] is False  # answered at once; the recheck runs aside
    await asyncio.sleep(0)
    await health.report()  # too soon for another recheck
    assert calls == 1
    await asyncio.sleep(0.06)
    await health.report()
    await until(lambda: status.ok)
    assert calls == 2
    await health.report()
    assert calls == 2  # up: never called


# --- the upstream clients' own statuses ------------------------------------------------------


async def test_the_upstream_status_follows_its_requests() -> None:
    async with OpenAIClient("http://127.0.0.1:9/v1", "sk", max_retries=0) as client:
        assert client.status.ok and client.status.detail == "no request yet"
        with pytest.raises(UpstreamUnavailable):
            [_ async for _ in client.stream_chat("gpt-3.5-turbo", [], 10)]
        assert not client.status.ok and client.status.detail.startswith("unreachable")
    async with fake_openai(Error(401, code="invalid_api_key"), Stream()) as fake:
        async with OpenAIClient(f"{fake.url}/v1", "sk", max_retries=0) as client:
            with pytest.raises(UpstreamError):
                [_ async for _ in client.stream_chat("gpt-3.5-turbo", [], 10)]
            assert client.status.detail == "OPENAI_API_KEY refused (HTTP 401)"
            [_ async for _ in client.stream_chat("gpt-3.5-turbo", [], 10)]
            assert client.status.ok


async def test_the_upstream_ping_asks_for_the_models() -> None:
    from simulator import start_simulator

    sim = await start_simulator()
    try:
        async with OpenAIClient(sim.openai_url, "sk") as client:
            client.status.down("unreachable")
            await client.ping()
            assert client.status.ok and client.status.detail == "reachable"
    finally:
        await sim.close()
    async with OpenAIClient("http://127.0.0.1:9/v1", "sk") as client:
        await client.ping()
        assert client.status.detail == "unreachable: ConnectError"


async def test_the_midjourney_status_follows_its_requests() -> None:
    async with MidjourneyClient("http://127.0.0.1:9") as mj:
        with pytest.raises(UpstreamUnavailable):
            await mj.fetch("task")
        assert mj.status.detail == "midjourney-proxy unreachable"
        await mj.ping()
        assert not mj.status.ok


# --- the endpoint ------------------------------------------------------------------------------


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeBotAPI]:
    api = await FakeBotAPI().start()
    yield api
    await api.close()


async def running(settings: Settings) -> tuple[Core, Any, list[Any]]:
    core = await assemble(settings)
    app = build_app(core)
    fronts = install_front_ends(core, settings, app)
    watch_front_ends(app[HEALTH_KEY], fronts)
    return core, app, fronts


async def test_healthz_is_503_while_telegram_cannot_be_reached(sqlite_url: str) -> None:
    settings = Settings(
        _env_file=None,
        wallet_url=sqlite_url,
        telegram_bot_token=TOKEN,
        telegram_api_base=UNREACHABLE,
    )
    core, app, fronts = await running(settings)
    [telegram] = fronts
    try:
        async with serve(app) as base, httpx.AsyncClient() as http:
            await telegram.start()
            await until(lambda: telegram.status.detail == "Bot API unreachable")
            await asyncio.sleep(1.1)  # past the report served to every caller for a second
            answer = await http.get(base + "/healthz")
            await telegram.stop()
    finally:
        await core.close()
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "down",
        "checks": {
            "wallet": {"status": "ok"},
            "store": {"status": "ok"},
            "upstream": {"status": "ok", "detail": "no request yet"},
            "telegram": {"status": "down", "detail": "Bot API unreachable"},
        },
    }


async def test_healthz_is_200_once_every_part_is_up_and_names_a_broken_store(
    sqlite_url: str, fake_api: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        _env_file=None,
        wallet_url=sqlite_url,
        telegram_bot_token=TOKEN,
        telegram_api_base=fake_api.url,
        demo_credits=500,
    )
    core, app, fronts = await running(settings)
    [telegram] = fronts
    try:
        async with serve(app) as base, httpx.AsyncClient() as http:
            await telegram.start()
            await until(lambda: telegram.status.ok)
            answer = await http.get(base + "/healthz")

            async def broken(key: str) -> None:
                raise OSError("disk I/O error")

            monkeypatch.setattr(core.services.store, "get", broken)
            await asyncio.sleep(1.1)
            broken_answer = await http.get(base + "/healthz")
            await telegram.stop()
    finally:
        await core.close()
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"wallet", "store", "upstream", "telegram"}
    assert body["checks"]["telegram"] == {"status": "ok", "detail": "polling"}
    assert "500" not in answer.text  # no business figures (balances, credits) in a probe
    assert broken_answer.status_code == 503
    assert broken_answer.json()["checks"]["store"] == {"status": "down", "detail": "OSError"}
