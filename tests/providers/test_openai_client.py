"""The OpenAI client against misbehaving upstreams: what a user is charged depends on these."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

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
from fakes.openai import Drop, Error, Hang, Stream, fake_openai

KEY = "sk-test-secret-key-0123456789"
MESSAGES = [{"role": "user", "content": "hello"}]


def client(base_url: str, **kw) -> OpenAIClient:
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("read_timeout", 2.0)
    kw.setdefault("connect_timeout", 1.0)
    return OpenAIClient(base_url, KEY, **kw)


async def collect(c: OpenAIClient, model: str = "gpt-3.5-turbo", **kw) -> list[Delta | Usage]:
    return [item async for item in c.stream_chat(model, MESSAGES, 100, **kw)]


def text_of(items: list[Delta | Usage]) -> str:
    return "".join(i.text for i in items if isinstance(i, Delta))


async def test_streams_text_then_the_upstreams_usage():
    async with fake_openai(Stream(["Hel", "lo"], usage=(12, 2, 5))) as fake:
        async with client(fake.base_url) as c:
            items = await collect(c)
    assert text_of(items) == "Hello"
    assert items[-1] == Usage(prompt_tokens=12, completion_tokens=2, cached_tokens=5)
    body = fake.requests[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 100
    assert body["messages"] == MESSAGES
    assert fake.headers[0]["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("model", ["o3", "o4-mini", "gpt-5", "gpt-5-mini"])
async def test_reasoning_models_get_max_completion_tokens(model):
    async with fake_openai(Stream()) as fake:
        async with client(fake.base_url) as c:
            await collect(c, model=model)
    assert fake.requests[0]["max_completion_tokens"] == 100
    assert "max_tokens" not in fake.requests[0]


async def test_rate_limit_waits_and_retries_then_succeeds():
    limited = Error(429, "rate_limit_exceeded", "requests", headers={"Retry-After": "0"})
    async with fake_openai(limited, Stream(["ok"])) as fake:
        async with client(fake.base_url) as c:
            items = await collect(c)
    assert text_of(items) == "ok"
    assert fake.count == 2


async def test_rate_limit_gives_up_after_bounded_retries():
    limited = Error(429, "rate_limit_exceeded", "requests", headers={"retry-after-ms": "1"})
    async with fake_openai(limited) as fake:
        async with client(fake.base_url, max_retries=3) as c:
            with pytest.raises(RateLimited):
                await collect(c)
    assert fake.count == 4  # the first try and three retries


async def test_insufficient_quota_is_not_retried_and_warns_the_operator(caplog):
    quota = Error(429, "insufficient_quota", "insufficient_quota", "You exceeded your quota")
    async with fake_openai(quota) as fake:
        async with client(fake.base_url, max_retries=5) as c:
            with caplog.at_level(logging.INFO), pytest.raises(QuotaExceeded):
                await collect(c)
    assert fake.count == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("insufficient_quota" in r.getMessage() for r in warnings)
    assert KEY not in caplog.text
    assert "hello" not in caplog.text


async def test_server_errors_are_retried_until_success():
    async with fake_openai(Error(500, type="server_error"), Error(502), Stream(["fine"])) as fake:
        async with client(fake.base_url, max_retries=3) as c:
            items = await collect(c)
    assert text_of(items) == "fine"
    assert fake.count == 3


async def test_server_errors_forever_end_as_unavailable_after_bounded_attempts():
    async with fake_openai(Error(503)) as fake:
        async with client(fake.base_url, max_retries=2) as c:
            with pytest.raises(UpstreamUnavailable):
                await collect(c)
    assert fake.count == 3


async def test_a_hanging_upstream_times_out_within_bounds():
    async with fake_openai(Hang()) as fake:
        async with client(fake.base_url, max_retries=1, read_timeout=0.2) as c:
            with pytest.raises(UpstreamUnavailable):
                await asyncio.wait_for(collect(c), 5)
    assert fake.count == 2


async def test_an_unreachable_upstream_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}/v1", max_retries=1) as c:
        with pytest.raises(UpstreamUnavailable):
            await collect(c)


async def test_a_connection_dropped_before_output_is_retried():
    async with fake_openai(Drop(), Stream(["second try"])) as fake:
        async with client(fake.base_url) as c:
            items = await collect(c)
    assert text_of(items) == "second try"
    assert fake.count == 2


async def test_a_stream_cut_after_output_reports_the_text_received_and_is_not_retried():
    async with fake_openai(Stream(["Once upon", " a time"], cut=True), Stream(["again"])) as fake:
        async with client(fake.base_url) as c:
            seen: list[str] = []
            with pytest.raises(StreamCut) as cut:
                async for item in c.stream_chat("gpt-3.5-turbo", MESSAGES, 100):
                    assert isinstance(item, Delta)
                    seen.append(item.text)
    assert cut.value.received_text == "Once upon a time" == "".join(seen)
    assert fake.count == 1


async def test_a_stream_that_goes_silent_after_output_is_cut_at_the_read_timeout():
    async with fake_openai(Stream(["partial"], hang=True)) as fake:
        async with client(fake.base_url, read_timeout=0.2) as c:
            with pytest.raises(StreamCut) as cut:
                await collect(c)
    assert cut.value.received_text == "partial"
    assert fake.count == 1


async def test_an_error_inside_the_stream_is_a_cut():
    async with fake_openai(Stream(["Some", " text"], error="server overloaded")) as fake:
        async with client(fake.base_url) as c:
            with pytest.raises(StreamCut) as cut:
                await collect(c)
    assert cut.value.received_text == "Some text"
    assert fake.count == 1


async def test_an_error_inside_the_stream_before_output_is_retried():
    async with fake_openai(Stream([], error="overloaded"), Stream(["ok"])) as fake:
        async with client(fake.base_url) as c:
            items = await collect(c)
    assert text_of(items) == "ok"
    assert fake.count == 2


async def test_done_without_usage_is_a_cut_with_the_whole_text():
    async with fake_openai(Stream(["All", " of it"], usage=None)) as fake:
        async with client(fake.base_url) as c:
            with pytest.raises(StreamCut) as cut:
                await collect(c)
    assert cut.value.received_text == "All of it"


async def test_usage_without_done_still_counts():
    async with fake_openai(Stream(["x"], usage=(5, 1, 0), done=False)) as fake:
        async with client(fake.base_url) as c:
            items = await collect(c)
    assert items[-1] == Usage(5, 1, 0)


async def test_context_length_exceeded_is_reported_for_trimming_and_not_retried():
    too_long = Error(400, "context_length_exceeded", message="maximum context length is 8192")
    async with fake_openai(too_long) as fake:
        async with client(fake.base_url) as c:
            with pytest.raises(ContextLengthExceeded):
                await collect(c)
    assert fake.count == 1


async def test_other_client_errors_carry_the_apis_message():
    bad = Error(401, "invalid_api_key", message="Incorrect API key provided")
    async with fake_openai(bad) as fake:
        async with client(fake.base_url) as c:
            with pytest.raises(UpstreamError) as err:
                await collect(c)
    assert type(err.value) is UpstreamError
    assert err.value.status == 401
    assert err.value.kind == "auth"
    assert "Incorrect API key" in err.value.message
    assert fake.count == 1


async def test_stop_ends_the_stream_at_once_without_usage():
    stop = asyncio.Event()
    async with fake_openai(Stream(["first words"], hang=True)) as fake:
        async with client(fake.base_url, read_timeout=30) as c:
            items: list[Delta | Usage] = []

            async def consume() -> None:
                async for item in c.stream_chat("gpt-3.5-turbo", MESSAGES, 100, stop=stop):
                    items.append(item)
                    stop.set()

            await asyncio.wait_for(consume(), 5)
    assert items == [Delta("first words")]


async def test_stop_during_retry_wait_returns_quietly():
    stop = asyncio.Event()
    limited = Error(429, "rate_limit_exceeded", headers={"Retry-After": "20"})
    async with fake_openai(limited) as fake:
        async with client(fake.base_url) as c:
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, stop.set)
            items = await asyncio.wait_for(collect(c, stop=stop), 5)
    assert items == []
    assert fake.count == 1


def test_the_key_never_shows_in_repr():
    assert KEY not in repr(OpenAIClient("http://x/v1", KEY))


async def test_a_long_retry_after_is_capped():
    limited = Error(429, "rate_limit_exceeded", headers={"Retry-After": "3600"})
    async with fake_openai(limited, Stream(["ok"])) as fake:
        async with client(fake.base_url, max_retry_wait=0.05) as c:
            items = await asyncio.wait_for(collect(c), 5)
    assert text_of(items) == "ok"


async def test_retry_after_as_an_http_date_is_understood():
    limited = Error(
        429, "rate_limit_exceeded", headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )
    async with fake_openai(limited, Stream(["ok"])) as fake:
        async with client(fake.base_url) as c:
            items = await asyncio.wait_for(collect(c), 5)  # a date in the past: retry at once
    assert text_of(items) == "ok"


async def test_failures_never_log_the_key_or_the_message(caplog):
    secret_text = "my private diary entry"
    messages = [{"role": "user", "content": secret_text}]
    script = (Error(500), Error(401, "invalid_api_key"), Stream(["cut"], cut=True))
    with caplog.at_level(logging.DEBUG, logger="bot.providers"):
        for step in script:
            async with fake_openai(step) as fake:
                async with client(fake.base_url, max_retries=1) as c:
                    with pytest.raises(UpstreamError):
                        _ = [i async for i in c.stream_chat("gpt-4o", messages, 10)]
    assert KEY not in caplog.text
    assert secret_text not in caplog.text
