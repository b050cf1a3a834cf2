"""A scripted OpenAI `/v1/chat/completions`: each request plays the next step of a script.

Steps say what the upstream does: answer an error (`Error`), stream chunks (`Stream`, which can
drop the connection, hang, or end without usage), hang before answering (`Hang`), or drop the
connection at once (`Drop`). When the script runs out, the last step repeats, so "500 forever"
is `[Error(500)]`. Every request's JSON body and headers are kept for assertions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fakes.server import serve


@dataclass
class Error:
    """An error answer with OpenAI's `{"error": {...}}` body."""

    status: int
    code: str | None = None
    type: str = "invalid_request_error"
    message: str = "simulated error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stream:
    """A 200 SSE stream of `texts` as deltas, then (optionally) usage and [DONE].

    `cut=True` drops the connection after the deltas; `hang=True` stops sending after them and
    keeps the connection open; `error` sends an error object after the deltas.
    """

    texts: list[str] = field(default_factory=lambda: ["Hello", ", world"])
    usage: tuple[int, int, int] | None = (10, 3, 0)
    done: bool = True
    cut: bool = False
    hang: bool = False
    error: str | None = None


@dataclass
class Hang:
    """Accept the request and never answer (until the server closes)."""


@dataclass
class Drop:
    """Close the connection without any answer."""


Step = Error | Stream | Hang | Drop


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, **kw: Any) -> dict:
    """One chat.completion.chunk as OpenAI sends it."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-3.5-turbo",
        "choices": choices,
    }
    body.update(kw)
    return body


class FakeOpenAI:
    """Plays `script`, one step per request. `base_url` is what a client should use."""

    def __init__(self, script: list[Step]) -> None:
        if not script:
            raise ValueError("a script needs at least one step")
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._closing = asyncio.Event()

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def count(self) -> int:
        return len(self.requests)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        return app

    async def _wait_closing(self) -> None:
        await self._closing.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        index = min(len(self.requests) - 1, len(self.script) - 1)
        step = self.script[index]
        if isinstance(step, Error):
            error = {"message": step.message, "type": step.type, "param": None, "code": step.code}
            return web.json_response({"error": error}, status=step.status, headers=step.headers)
        if isinstance(step, Hang):
            await self._wait_closing()
            return web.Response(status=503)
        if isinstance(step, Drop):
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return await self._stream(request, step)

    async def _stream(self, request: web.Request, step: Stream) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        await send(chunk({"role": "assistant", "content": ""}))
        for text in step.texts:
            await send(chunk({"content": text}))
        if step.hang:
            await self._wait_closing()
            return resp
        if step.cut:
            assert request.transport is not None
            request.transport.close()
            return resp
        if step.error is not None:
            await send({"error": {"message": step.error, "type": "server_error", "code": None}})
            await resp.write_eof()
            return resp
        await send(chunk({}, finish="stop"))
        if step.usage is not None:
            prompt, completion, cached = step.usage
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            await send(chunk(None, usage=usage))
        if step.done:
            await send("[DONE]")
        await resp.write_eof()
        return resp

    def close(self) -> None:
        """Release hanging requests."""
        self._closing.set()


@asynccontextmanager
async def fake_openai(*script: Step) -> AsyncIterator[FakeOpenAI]:
    """A running FakeOpenAI playing `script`."""
    fake = FakeOpenAI(list(script))
    async with serve(fake.app()) as url:
        fake.url = url
        try:
            yield fake
        finally:
            fake.close()
