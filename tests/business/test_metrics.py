"""Operations: what Prometheus scrapes from /metrics, over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bot import metrics
from bot.providers.openai import OpenAIClient, QuotaExceeded, Usage
from fakes.server import serve as served
from simulator import start_simulator
from tests.business.conftest import Bank


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_a_scrape_shows_requests_tokens_credits_topups_latency_errors_and_holds(
    sqlite_bank: Bank,
) -> None:
    m = metrics.Metrics()  # a registry of its own, as in the bot
    wallet = metrics.instrument_wallet(sqlite_bank.wallet, m)
    await wallet.credit("telegram:1", 50_000, "code:abc", "redemption code")
    await wallet.credit("telegram:1", 1_000, "admin:grant:1", "grant")  # not a top-up
    hold = await wallet.hold("telegram:1", 10_000, "h1", ttl=600)
    meta = {"model": "gpt-3.5-turbo", "prompt_tokens": 20, "completion_tokens": 30}
    await wallet.capture(hold.id, 2_000, reason="chat", meta=meta)
    await wallet.hold("telegram:1", 5_000, "h2", ttl=600)  # still open at scrape time
    metrics.count_request("telegram", "message", m)

    sim = await start_simulator()
    client = metrics.instrument_openai(OpenAIClient(sim.openai_url, "sk-test", max_retries=0), m)
    try:
        items = [
            i
            async for i in client.stream_chat(
                "gpt-3.5-turbo", [{"role": "user", "content": "hi"}], 50
            )
        ]
        assert isinstance(items[-1], Usage)
        with pytest.raises(QuotaExceeded):
            async for _ in client.stream_chat(
                "gpt-3.5-turbo", [{"role": "user", "content": "[[fault:quota]]"}], 50
            ):
                pass
    finally:
        await client.close()
        await sim.close()

    app = web.Application()
    metrics.install(app, wallet=wallet, metrics=m)
    async with served(app) as base, httpx.AsyncClient() as http:
        resp = await http.get(base + "/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        s = samples(resp.text)

    assert s[("creditbot_requests_total", (("kind", "message"), ("platform", "telegram")))] == 1
    assert s[("creditbot_topups_total", (("source", "code"),))] == 1
    assert s[("creditbot_topup_credits_total", (("source", "code"),))] == 50
    model = ("model", "gpt-3.5-turbo")
    assert s[("creditbot_credits_charged_total", (model,))] == 2
    assert s[("creditbot_tokens_total", (("direction", "input"), model))] == 20
    assert s[("creditbot_tokens_total", (("direction", "output"), model))] == 30
    latency = ("creditbot_upstream_latency_seconds_count", (model, ("upstream", "openai")))
    assert s[latency] == 1
    assert s[("creditbot_errors_total", (("kind", "quota"),))] == 1
    assert s[("creditbot_open_holds", ())] == 1


def test_labelled_children_are_looked_up_once_per_label_set_and_registry() -> None:
    """The chat path counts through remembered children: the same child every time, counting
    into its own registry only."""
    a, b = metrics.Metrics(), metrics.Metrics()
    child = a.child(a.tokens, "gpt-4o", "input")
    assert a.child(a.tokens, "gpt-4o", "input") is child
    assert child is a.tokens.labels("gpt-4o", "input")  # what labels() gives, not a copy
    assert a.child(a.tokens, "gpt-4o", "output") is not child
    for _ in range(3):
        metrics.count_request("wechat", "chat", a)
    metrics.count_request("wechat", "chat", b)
    text_a, text_b = (m.render().decode() for m in (a, b))
    key = ("creditbot_requests_total", (("kind", "chat"), ("platform", "wechat")))
    assert samples(text_a)[key] == 3
    assert samples(text_b)[key] == 1
