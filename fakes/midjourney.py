"""A scripted midjourney-proxy: canned JSON answers per route, every request recorded.

For the shapes real proxies send that our simulator does not (numbers as ids, nulls, extra
fields, odd status codes) and for checking what the client sends (the mj-api-secret header).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from fakes.server import serve

Answers = dict[str, list[tuple[int, Any]]]


class FakeMidjourney:
    """`answers` maps "POST /mj/submit/imagine" (etc.) to a list of (status, json) played in turn.

    The last answer of a route repeats. Fetch routes match any id: "GET /mj/task/fetch".
    """

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []  # (method, path, headers, body)
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.seen.append((request.method, request.path, dict(request.headers), body))
        key = f"{request.method} {request.path}"
        if request.path.startswith("/mj/task/") and request.path.endswith("/fetch"):
            key = f"{request.method} /mj/task/fetch"
        plays = self.answers.get(key)
        if not plays:
            return web.json_response({"error": "no such route"}, status=404)
        count = sum(1 for s in self.seen if f"{s[0]} {s[1]}" == f"{request.method} {request.path}")
        status, payload = plays[min(count - 1, len(plays) - 1)]
        if payload is None:
            return web.Response(status=status)
        return web.json_response(payload, status=status)


@asynccontextmanager
async def fake_midjourney(
    answers: dict[str, list[tuple[int, Any]]],
) -> AsyncIterator[FakeMidjourney]:
    fake = FakeMidjourney(answers)
    async with serve(fake.app()) as url:
        fake.url = url
        yield fake
