"""The WeChat API calls this bot needs: access_token, customer-service messages, temporary
media. Async httpx against WECHAT_API_BASE, so nothing blocks the event loop.

The access_token is shared by every bot process through the Store (Redis or the database):
WeChat allows a limited number of token fetches a day and each fetch invalidates older
tokens within minutes, so exactly one process refreshes it, under a lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import httpx

from bot.health import Status
from bot.store.base import Store
from bot.store.keys import wx_lock_key, wx_token_key, wx_token_lock

log = logging.getLogger(__name__)

OUT_OF_WINDOW = 45015  # the user has not written to us for 48 hours
TOO_MANY = 45047  # too many customer-service messages since the user's last message
TOKEN_ERRORS = frozenset({40001, 40014, 42001})  # invalid / malformed / expired access_token
KEEP_FOR_LATER = frozenset({OUT_OF_WINDOW, TOO_MANY})

TOKEN_PATH = "/cgi-bin/token"

# Refresh this long before WeChat says the token expires.
_TOKEN_MARGIN = 300.0
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # WeChat's limit for temporary image media


class WeChatApiError(Exception):
    """WeChat answered with a non-zero errcode (or could not be reached: errcode -1)."""

    def __init__(self, errcode: int, errmsg: str = "") -> None:
        super().__init__(f"WeChat API error {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class WeChatApi:
    """A small async client for the Official Account API."""

    def __init__(
        self,
        base_url: str,
        appid: str,
        secret: str,
        kv: Store,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        status: Status | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.appid = appid
        self.secret = secret
        self.kv = kv
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout)
        self._token: str | None = None
        self._token_until = 0.0
        # How the last call went, for /healthz: down while WeChat cannot be reached or refuses
        # the access_token (a wrong WECHAT_SECRET, this server's IP not whitelisted).
        self.status = status or Status("wechat", ok=True, detail="no API call yet")

    @property
    def _token_key(self) -> str:
        return wx_token_key(self.appid)

    async def close(self) -> None:
        if self._own_http:
            await self.http.aclose()

    # --- access_token ----------------------------------------------------------------------

    async def access_token(self) -> str:
        """A valid token: this process's copy, else the shared one, else a fresh one."""
        if self._token and time.monotonic() < self._token_until:
            return self._token
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0
        delay = 0.01
        lock = wx_lock_key(wx_token_lock(self.appid))
        while True:
            shared = await self.kv.get(self._token_key)
            if shared:
                return self._remember(shared, 60.0)
            # Waiters poll the token (a read); only one process at a time may fetch it.
            holder = uuid.uuid4().hex
            if await self.kv.add(lock, holder, ttl=30.0):
                try:
                    return await self._refresh()
                finally:
                    if await self.kv.get(lock) == holder:
                        await self.kv.delete(lock)
            if loop.time() > deadline:
                raise WeChatApiError(-1, "timed out waiting for another process's token refresh")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _refresh(self) -> str:
        shared = await self.kv.get(self._token_key)  # another process may have just won
        if shared:
            return self._remember(shared, 60.0)
        data = await self._request(
            "GET",
            TOKEN_PATH,
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )
        token = str(data["access_token"])
        ttl = max(float(data.get("expires_in", 7200)) - _TOKEN_MARGIN, 60.0)
        await self.kv.set(self._token_key, token, ttl=ttl)
        log.info("wechat access_token refreshed (valid %ss)", int(ttl))
        return self._remember(token, min(ttl, 60.0))

    def _remember(self, token: str, seconds: float) -> str:
        self._token = token
        self._token_until = time.monotonic() + seconds
        return token

    async def _forget(self, token: str) -> None:
        self._token = None
        if await self.kv.get(self._token_key) == token:
            await self.kv.delete(self._token_key)

    # --- calls -------------------------------------------------------------------------------

    async def send_text(self, openid: str, text: str) -> None:
        """A customer-service text message (at most 2048 bytes: split before)."""
        await self._call(
            "/cgi-bin/message/custom/send",
            {"touser": openid, "msgtype": "text", "text": {"content": text}},
        )

    async def send_image(self, openid: str, media_id: str) -> None:
        await self._call(
            "/cgi-bin/message/custom/send",
            {"touser": openid, "msgtype": "image", "image": {"media_id": media_id}},
        )

    async def upload_image(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload temporary media (kept by WeChat for 3 days); return its media_id."""
        result = await self._call(
            "/cgi-bin/media/upload",
            None,
            params={"type": "image"},
            files={"media": (filename, data, content_type)},
        )
        return str(result["media_id"])

    async def download(self, url: str) -> tuple[bytes, str]:
        """Fetch an image to re-upload it (capped at WeChat's 10 MB image limit)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with self.http.stream("GET", url, follow_redirects=True) as resp:
                resp.raise_for_status()
                ctype = resp.headers.get("content-type", "image/png").split(";")[0].strip()
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise WeChatApiError(-1, "image larger than 10 MB")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise WeChatApiError(-1, f"image download failed: {type(exc).__name__}") from exc
        return b"".join(chunks), ctype

    async def _call(
        self,
        path: str,
        payload: dict[str, Any] | None,
        *,
        params: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST with the access_token; on a stale token, refresh once and try again."""
        for attempt in (1, 2):
            token = await self.access_token()
            try:
                return await self._request(
                    "POST",
                    path,
                    params={**(params or {}), "access_token": token},
                    # ensure_ascii=False: WeChat shows \\uXXXX escapes literally.
                    content=None
                    if payload is None
                    else json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                    files=files,
                )
            except WeChatApiError as exc:
                if exc.errcode in TOKEN_ERRORS and attempt == 1:
                    await self._forget(token)
                    continue
                raise
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        headers = {"Content-Type": "application/json; charset=utf-8"} if kw.get("content") else {}
        try:
            resp = await self.http.request(method, self.base_url + path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            self.status.down("WeChat API unreachable")
            raise WeChatApiError(-1, f"unreachable: {type(exc).__name__}") from exc
        try:
            data = resp.json()
        except ValueError as exc:
            self.status.down(f"WeChat API answered HTTP {resp.status_code}, not JSON")
            raise WeChatApiError(-1, f"HTTP {resp.status_code}, not JSON") from exc
        if not isinstance(data, dict):
            self.status.down("WeChat API answered something unexpected")
            raise WeChatApiError(-1, "unexpected answer")
        code = int(data.get("errcode", 0) or 0)
        if code and path == TOKEN_PATH:
            self.status.down(f"access_token refused (errcode {code})")
        else:  # WeChat answered (an errcode here refuses one message, not the account)
            self.status.up("WeChat API answered")
        if code:
            raise WeChatApiError(code, str(data.get("errmsg", "")))
        return data

    async def ping(self) -> None:
        """One cheap call (the API's own IP list) with the access_token: reachable and
        taking our credentials, or not. The outcome goes to `status`."""
        token = await self.access_token()
        try:
            await self._request("GET", "/cgi-bin/get_api_domain_ip", params={"access_token": token})
        except WeChatApiError as exc:
            if exc.errcode in TOKEN_ERRORS:
                await self._forget(token)
