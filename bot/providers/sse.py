"""A small server-sent events reader: the `data` of each event, as text.

OpenAI's stream is plain SSE (`data: {...}` lines, events split by a blank line, `data: [DONE]`
at the end). We only need `data`, so `event`, `id`, `retry` and comments are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def iter_data(lines: AsyncIterable[str]) -> AsyncIterator[str]:
    """Yield the joined `data` field of every event in a stream of lines."""
    buffer: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            buffer.append(value)
    if buffer:
        yield "\n".join(buffer)


async def until_set(items: AsyncIterator[T], stop: asyncio.Event | None) -> AsyncIterator[T]:
    """Yield from `items` until `stop` is set, even while waiting for the next item.

    A user pressing stop must not wait for the upstream's next chunk, so each wait races the
    event; the pending read is cancelled and the caller closes the response.
    """
    if stop is None:
        async for item in items:
            yield item
        return
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            nxt = asyncio.ensure_future(anext(items))
            await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                    await nxt
                return
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        closer = getattr(items, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
