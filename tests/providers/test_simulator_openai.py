"""The simulated OpenAI upstream, through the real client over HTTP.

Its usage must equal billing.tokens' counts: demos and the core's tests bill from it.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from billing import tokens
from bot.providers.openai import (
    ContextLengthExceeded,
    Delta,
    OpenAIClient,
    QuotaExceeded,
    RateLimited,
    StreamCut,
    UpstreamError,
    UpstreamUnavailable,
    Usage,
)
from simulator import Simulator, start_simulator

ONE = [{"role": "user", "content": "x"}]


def client(sim: Simulator, **kw) -> OpenAIClient:
    kw.setdefault("max_retries", 1)
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("read_timeout", 5.0)
    return OpenAIClient(sim.openai_url, "sk-sim", **kw)


async def chat(
    sim: Simulator, text: str, model: str = "gpt-3.5-turbo", max_tokens: int | None = 200, **kw
) -> tuple[str, Usage | None]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    async with client(sim, **kw) as c:
        parts: list[str] = []
        usage = None
        async for item in c.stream_chat(model, messages, max_tokens):
            if isinstance(item, Delta):
                parts.append(item.text)
            else:
                usage = item
    return "".join(parts), usage


@pytest.mark.parametrize("model", ["gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-5-mini"])
async def test_usage_equals_the_bots_own_token_counts(sim, model):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about rivers, please.", "name": "alice"},
    ]
    async with client(sim) as c:
        items = [i async for i in c.stream_chat(model, messages, 300)]
    text = "".join(i.text for i in items if isinstance(i, Delta))
    usage = items[-1]
    assert isinstance(usage, Usage)
    assert usage.prompt_tokens == tokens.count_messages(model, messages)
    assert usage.completion_tokens == tokens.count_text(model, text)
    assert text and text[0].isupper()


async def test_replies_are_deterministic_per_prompt(sim):
    first, _ = await chat(sim, "What is a river?")
    again, _ = await chat(sim, "What is a river?")
    other, _ = await chat(sim, "What is a mountain range, and why?")
    assert first == again
    assert first != other


@pytest.mark.parametrize("n", [1, 7, 50, 333])
async def test_tokens_marker_gives_a_reply_of_exactly_n_tokens(sim, n):
    text, usage = await chat(sim, f"long please [[tokens:{n}]]", max_tokens=None)
    assert usage is not None and usage.completion_tokens == n
    assert tokens.count_text("gpt-3.5-turbo", text) == n


async def test_max_tokens_stops_the_reply_with_finish_reason_length(sim):
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "essay [[tokens:100]]"}],
        "max_tokens": 10,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient() as h:
        resp = await h.post(sim.openai_url + "/chat/completions", json=body)
    events = [json.loads(line[6:]) for line in resp.text.splitlines() if line[6:].startswith("{")]
    finishes = [c["choices"][0]["finish_reason"] for c in events if c["choices"]]
    assert finishes[-1] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 10
    assert resp.text.rstrip().endswith("data: [DONE]")


async def test_reasoning_models_refuse_max_tokens_like_openai(sim):
    body = {"model": "o3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with httpx.AsyncClient() as h:
        resp = await h.post(sim.openai_url + "/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "unsupported_parameter"
    _, usage = await chat(sim, "hi [[tokens:40]]", model="o3", max_tokens=5)  # client adapts
    assert usage is not None and usage.completion_tokens == 5


async def test_non_streaming_answer_has_the_same_text_and_usage(sim):
    messages = [{"role": "user", "content": "plain answer please"}]
    async with httpx.AsyncClient() as h:
        resp = await h.post(
            sim.openai_url + "/chat/completions", json={"model": "gpt-4o", "messages": messages}
        )
    data = resp.json()
    text = data["choices"][0]["message"]["content"]
    assert data["object"] == "chat.completion"
    assert data["usage"]["prompt_tokens"] == tokens.count_messages("gpt-4o", messages)
    assert data["usage"]["completion_tokens"] == tokens.count_text("gpt-4o", text)


async def test_unknown_model_is_404_model_not_found(sim):
    with pytest.raises(UpstreamError) as err:
        await chat(sim, "hi", model="gpt-9-imaginary")
    assert err.value.status == 404
    assert err.value.code == "model_not_found"


async def test_models_endpoint_lists_models(sim):
    async with httpx.AsyncClient() as h:
        data = (await h.get(sim.openai_url + "/models")).json()
    assert "gpt-4o" in {m["id"] for m in data["data"]}


async def test_fault_500_marker_fails_every_retry(sim):
    with pytest.raises(UpstreamUnavailable):
        await chat(sim, "boom [[fault:500]]", max_retries=2)
    assert sim.stats["POST /v1/chat/completions"] == 3


async def test_armed_fault_fails_only_the_next_requests(sim):
    async with httpx.AsyncClient() as h:
        resp = await h.post(sim.url + "/_sim/fault", json={"fault": "500", "count": 2})
    assert resp.json()["ok"] is True
    text, usage = await chat(sim, "hello", max_retries=3)
    assert text and usage is not None
    async with httpx.AsyncClient() as h:
        stats = (await h.get(sim.url + "/_sim/stats")).json()
    assert stats["paths"]["POST /v1/chat/completions"] == 3


async def test_fault_429_is_rate_limited_after_retries(sim):
    with pytest.raises(RateLimited):
        await chat(sim, "[[fault:429]] hi", max_retries=2)
    assert sim.stats["POST /v1/chat/completions"] == 3


async def test_fault_quota(sim):
    with pytest.raises(QuotaExceeded):
        await chat(sim, "hi [[fault:quota]]", max_retries=3)
    assert sim.stats["POST /v1/chat/completions"] == 1


async def test_fault_context(sim):
    with pytest.raises(ContextLengthExceeded):
        await chat(sim, "hi [[fault:context]]")


@pytest.mark.parametrize("fault", ["cut", "stream_error", "nousage"])
async def test_broken_streams_are_cuts_with_the_text_received(sim, fault):
    full, _ = await chat(sim, "a story")
    with pytest.raises(StreamCut) as cut:
        await chat(sim, f"a story [[fault:{fault}]]")
    received = cut.value.received_text
    if fault == "nousage":
        assert received == full  # the whole reply came, only the usage chunk is missing
    else:
        assert received and full.startswith(received) and received != full
    assert sim.stats["POST /v1/chat/completions"] == 2


async def test_fault_slow_sends_one_delta_then_waits_so_stop_can_end_it(sim):
    stop = asyncio.Event()
    got: list[Delta | Usage] = []
    async with client(sim) as c:

        async def consume() -> None:
            messages = [{"role": "user", "content": "slowly [[fault:slow]]"}]
            async for item in c.stream_chat("gpt-4o", messages, 100, stop=stop):
                got.append(item)
                stop.set()

        await asyncio.wait_for(consume(), 5)
    assert len(got) == 1 and isinstance(got[0], Delta)


async def test_latency_and_api_key_are_configurable():
    sim = await start_simulator(latency=0.01, api_key="sk-right")
    try:
        async with OpenAIClient(sim.openai_url, "sk-wrong", max_retries=0) as c:
            with pytest.raises(UpstreamError) as err:
                _ = [
                    i async for i in c.stream_chat("gpt-4o", [{"role": "user", "content": "x"}], 5)
                ]
        assert err.value.status == 401
        async with OpenAIClient(sim.openai_url, "sk-right", max_retries=0) as c:
            items = [
                i async for i in c.stream_chat("gpt-4o", [{"role": "user", "content": "x"}], 5)
            ]
        assert isinstance(items[-1], Usage)
    finally:
        await sim.close()
