"""The SSE reader keeps exactly the data OpenAI sends, whatever the framing."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bot.providers.sse import iter_data


async def lines(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_events_comments_fields_and_crlf():
    stream = lines(
        ": keep-alive",
        "",
        "event: message\r\n",
        'data: {"a": 1}\r\n',
        "\r\n",
        "data:first",
        "data: second",
        "id: 7",
        "",
        "data: [DONE]",
    )
    assert [d async for d in iter_data(stream)] == ['{"a": 1}', "first\nsecond", "[DONE]"]
