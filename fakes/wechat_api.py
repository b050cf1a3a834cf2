"""A fake WeChat API server on loopback: tokens, customer-service messages, temporary media.

It speaks the documented JSON (errcode/errmsg), records every call, and misbehaves on
request: `fail_sends(errcode, n)` answers the next n customer-service sends with errcode
(45015 outside the 48-hour window, 45047 too many messages), `expire_tokens()` makes every
issued token invalid (40001). It also serves a small PNG at /img/NAME.png, standing in for
an image host.
"""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@dataclass
class FakeWeChat:
    appid: str = "wxfake"
    secret: str = "fakesecret"
    sent: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    token_fetches: int = 0
    _fail: list[int] = field(default_factory=list)
    _valid: set[str] = field(default_factory=set)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    url: str = ""
    _runner: web.AppRunner | None = None

    def fail_sends(self, errcode: int, n: int = 1) -> None:
        self._fail.extend([errcode] * n)

    def expire_tokens(self) -> None:
        self._valid.clear()

    def texts_to(self, openid: str) -> list[str]:
        mine = [m for m in self.sent if m["touser"] == openid and m["msgtype"] == "text"]
        return [m["text"]["content"] for m in mine]

    def images_to(self, openid: str) -> list[str]:
        mine = [m for m in self.sent if m["touser"] == openid and m["msgtype"] == "image"]
        return [m["image"]["media_id"] for m in mine]

    # --- server ------------------------------------------------------------------------------

    async def start(self) -> FakeWeChat:
        app = web.Application()
        app.router.add_get("/cgi-bin/token", self._token)
        app.router.add_post("/cgi-bin/message/custom/send", self._send)
        app.router.add_post("/cgi-bin/media/upload", self._upload)
        app.router.add_get("/img/{name}", self._image)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _bad_token(self, request: web.Request) -> web.Response | None:
        if request.query.get("access_token") not in self._valid:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        return None

    async def _token(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("appid") != self.appid or q.get("secret") != self.secret:
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        self.token_fetches += 1
        token = f"token-{self.token_fetches}"
        self._valid.add(token)
        return web.json_response({"access_token": token, "expires_in": 7200})

    async def _send(self, request: web.Request) -> web.Response:
        if (bad := self._bad_token(request)) is not None:
            return bad
        raw = await request.read()
        body = json.loads(raw.decode("utf-8"))
        if self._fail:
            code = self._fail.pop(0)
            self.refused.append({**body, "errcode": code})
            return web.json_response({"errcode": code, "errmsg": "refused by the fake"})
        if body.get("msgtype") == "text":
            assert len(body["text"]["content"].encode("utf-8")) <= 2048, "text over 2048 bytes"
            assert b"\\u" not in raw, "Chinese must not be sent as \\u escapes"
        self.sent.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _upload(self, request: web.Request) -> web.Response:
        if (bad := self._bad_token(request)) is not None:
            return bad
        reader = await request.multipart()
        part = await reader.next()
        assert part is not None and part.name == "media"  # type: ignore[union-attr]
        data = await part.read()  # type: ignore[union-attr]
        media_id = f"media-{next(self._ids)}"
        self.uploads.append({"type": request.query.get("type"), "size": len(data), "id": media_id})
        return web.json_response({"type": "image", "media_id": media_id, "created_at": 0})

    async def _image(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")
