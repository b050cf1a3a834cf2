"""OpenAI chat completions over SSE, with the retry and billing facts the core relies on.

The client yields `Delta`s as text arrives and a final `Usage` (the upstream's count, which is
what we charge). Retries happen only while nothing has been yielded: once a user has seen text,
a failure becomes `StreamCut` so the core can charge exactly what was shown. Works with any
OpenAI-compatible gateway through `base_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from bot.health import Status
from bot.providers import sse
from bot.providers.errors import (
    ContextLengthExceeded,
    QuotaExceeded,
    RateLimited,
    StreamCut,
    UpstreamError,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = [
    "ContextLengthExceeded",
    "Delta",
    "OpenAIClient",
    "QuotaExceeded",
    "RateLimited",
    "StreamCut",
    "UpstreamError",
    "UpstreamUnavailable",
    "Usage",
    "uses_max_completion_tokens",
]

log = logging.getLogger(__name__)

# o-series and gpt-5 models refuse `max_tokens` and want `max_completion_tokens`.
_COMPLETION_TOKENS_MODELS = re.compile(r"^(?:ft:)?(?:o\d|gpt-5)")


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """The upstream's own token count for the whole request: the truth we bill."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


def uses_max_completion_tokens(model: str) -> bool:
    """True for models that take `max_completion_tokens` instead of `max_tokens`."""
    return bool(_COMPLETION_TOKENS_MODELS.match(model))


class _Retry(Exception):
    """Internal: this attempt failed before output; wait `delay` (None = backoff) and retry."""

    def __init__(self, error: UpstreamError, delay: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


class OpenAIClient:
    """Streams chat completions from `{base_url}/chat/completions`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        max_retries: int = 3,
        http: httpx.AsyncClient | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_wait: float = 30.0,
        proxy: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.max_retries = max(0, max_retries)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_wait = max_retry_wait
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self._own_http = http is None
        # OPENAI_PROXY (http://, https://, socks5://); without it httpx honours HTTPS_PROXY.
        self._http = http or httpx.AsyncClient(timeout=self._timeout, proxy=proxy or None)
        # How the last request went, for /healthz (bot.health): no calls of its own while up;
        # while down, `ping` once in a while.
        self.status = Status("upstream", ok=True, detail="no request yet", recheck=self.ping)
        self._ping_timeout = httpx.Timeout(connect_timeout, read=10.0, write=10.0, pool=10.0)

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> OpenAIClient:
        """A client configured from OPENAI_* settings."""
        return cls(
            settings.openai_base_url,
            settings.openai_api_key,
            connect_timeout=settings.openai_connect_timeout,
            read_timeout=settings.openai_read_timeout,
            max_retries=settings.openai_max_retries,
            proxy=settings.openai_proxy or None,
            **kw,
        )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(base_url={self.base_url!r})"

    async def close(self) -> None:
        """Close the HTTP client if this object made it."""
        self.status.cancel()
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _body(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None) -> dict:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens is not None:
            key = "max_completion_tokens" if uses_max_completion_tokens(model) else "max_tokens"
            body[key] = max_tokens
        return body

    async def stream_chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int | None,
        *,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[Delta | Usage]:
        """Yield the reply as `Delta`s, then one `Usage`.

        Raises QuotaExceeded, RateLimited, ContextLengthExceeded, UpstreamUnavailable or
        UpstreamError before any output, StreamCut after some. When `stop` is set the stream is
        closed and the generator returns without a Usage. The outcome is kept in `status`.
        """
        try:
            stream = self._stream_chat(model, messages, max_tokens, stop)
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, Usage):
                        self.status.up("last request answered")
                    yield item
        except UpstreamError as exc:
            self._note(exc)
            raise

    def _note(self, exc: UpstreamError) -> None:
        """Down when the upstream cannot serve anyone (unreachable, key refused, no quota);
        a refusal of one request (context length, a bad model) says nothing of the rest."""
        if isinstance(exc, UpstreamUnavailable):
            self.status.down(f"unreachable: {exc.message or exc.kind}"[:120])
        elif isinstance(exc, QuotaExceeded):
            self.status.down("the account behind OPENAI_API_KEY has no quota left")
        elif exc.kind == "auth":
            self.status.down(f"OPENAI_API_KEY refused (HTTP {exc.status})")
        else:
            self.status.up(f"last request: {exc.kind}")

    async def ping(self) -> None:
        """GET /models once: reachable and taking our key is up (a gateway without /models
        counts as reachable). The outcome goes to `status`."""
        try:
            resp = await self._http.get(
                f"{self.base_url}/models", headers=self._headers(), timeout=self._ping_timeout
            )
        except httpx.HTTPError as exc:
            self.status.down(f"unreachable: {type(exc).__name__}")
            return
        if resp.status_code in (401, 403):
            self.status.down(f"OPENAI_API_KEY refused (HTTP {resp.status_code})")
        elif resp.status_code >= 500:
            self.status.down(f"unavailable (HTTP {resp.status_code})")
        else:
            self.status.up("reachable")

    async def _stream_chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int | None,
        stop: asyncio.Event | None,
    ) -> AsyncIterator[Delta | Usage]:
        url = f"{self.base_url}/chat/completions"
        body = self._body(model, messages, max_tokens)
        attempt = 0
        while True:
            if stop is not None and stop.is_set():
                return
            received: list[str] = []
            try:
                async with contextlib.aclosing(self._attempt(url, body, received, stop)) as items:
                    async for item in items:
                        yield item
                return
            except _Retry as retry:
                if received:  # cannot happen: _attempt raises StreamCut after output
                    raise StreamCut("".join(received)) from retry.error
                if attempt >= self.max_retries:
                    raise retry.error from None
                delay = retry.delay if retry.delay is not None else self._backoff(attempt)
                attempt += 1
                log.info(
                    "OpenAI %s (%s); retry %d/%d in %.2fs",
                    retry.error.kind,
                    retry.error.status or "no status",
                    attempt,
                    self.max_retries,
                    delay,
                )
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        return
                    except TimeoutError:
                        pass

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_base * (2**attempt))
        return base * (0.75 + random.random() / 2)  # jitter spreads a herd of retries

    async def _attempt(
        self, url: str, body: dict, received: list[str], stop: asyncio.Event | None
    ) -> AsyncIterator[Delta | Usage]:
        """One HTTP request. Pre-output failures become _Retry or a final error."""
        try:
            async with self._http.stream(
                "POST", url, json=body, headers=self._headers(), timeout=self._timeout
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._http_error(resp)
                async with contextlib.aclosing(self._read_stream(resp, received, stop)) as items:
                    async for item in items:
                        yield item
        except httpx.TimeoutException as exc:
            if received:
                raise StreamCut("".join(received), f"read timeout: {type(exc).__name__}") from exc
            raise _Retry(UpstreamUnavailable(f"timeout: {type(exc).__name__}")) from exc
        except httpx.TransportError as exc:
            if received:
                why = f"connection lost: {type(exc).__name__}"
                raise StreamCut("".join(received), why) from exc
            raise _Retry(UpstreamUnavailable(f"connection failed: {type(exc).__name__}")) from exc

    async def _read_stream(
        self, resp: httpx.Response, received: list[str], stop: asyncio.Event | None
    ) -> AsyncIterator[Delta | Usage]:
        usage: Usage | None = None
        done = False
        events = sse.until_set(sse.iter_data(resp.aiter_lines()), stop)
        async with contextlib.aclosing(events):
            async for data in events:
                if data.strip() == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    self._fail_mid_stream(received, "malformed chunk")
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message", "") if isinstance(error, dict) else str(error)
                    self._fail_mid_stream(received, f"error in stream: {message}")
                for choice in chunk.get("choices") or ():
                    delta = (choice or {}).get("delta") or {}
                    text = delta.get("content")
                    if text:
                        received.append(text)
                        yield Delta(text)
                if chunk.get("usage"):
                    usage = _parse_usage(chunk["usage"])
        if stop is not None and stop.is_set():
            return
        if usage is not None:
            yield usage
            return
        text = "".join(received)
        if done:
            raise StreamCut(text, "stream ended without usage")
        self._fail_mid_stream(received, "stream ended early")

    @staticmethod
    def _fail_mid_stream(received: list[str], why: str) -> None:
        if received:
            raise StreamCut("".join(received), why)
        raise _Retry(UpstreamUnavailable(why))

    def _http_error(self, resp: httpx.Response) -> Exception:
        """Turn a non-200 answer into the error (or the retry) it stands for."""
        status = resp.status_code
        message, code, etype = _error_fields(resp)
        if status == 429:
            if "insufficient_quota" in (code, etype):
                log.warning(
                    "OpenAI refused with insufficient_quota: the account behind OPENAI_API_KEY "
                    "has no quota left; add credit at the provider (users see 'unavailable')"
                )
                return QuotaExceeded(message, status=status, code=code)
            return _Retry(
                RateLimited(message, status=status, code=code or etype),
                self._retry_after(resp),
            )
        if status == 400 and (
            code == "context_length_exceeded" or "context_length_exceeded" in message
        ):
            return ContextLengthExceeded(message, status=status, code=code)
        if status >= 500 or status == 408:
            return _Retry(UpstreamUnavailable(message, status=status, code=code))
        kind = {401: "auth", 403: "auth", 404: "not_found"}.get(status, "rejected")
        log.warning("OpenAI refused the request: HTTP %d %s", status, code or etype or "")
        return UpstreamError(message or f"HTTP {status}", kind=kind, status=status, code=code)

    def _retry_after(self, resp: httpx.Response) -> float | None:
        """Seconds to wait from retry-after-ms / Retry-After (seconds or a date), capped."""
        value: float | None = None
        ms = resp.headers.get("retry-after-ms")
        if ms:
            try:
                value = float(ms) / 1000
            except ValueError:
                value = None
        header = resp.headers.get("retry-after")
        if value is None and header:
            try:
                value = float(header)
            except ValueError:
                parsed = email.utils.parsedate_to_datetime(header) if header else None
                if parsed is not None:
                    value = parsed.timestamp() - time.time()
        if value is None:
            return None
        return min(max(0.0, value), self.max_retry_wait)


def _error_fields(resp: httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, code, type) from OpenAI's `{"error": {...}}` body, tolerant of gateways."""
    try:
        payload = resp.json()
    except ValueError:
        return resp.text[:300], None, None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        etype = error.get("type")
        return (
            str(error.get("message") or ""),
            str(code) if code is not None else None,
            str(etype) if etype is not None else None,
        )
    if isinstance(error, str):
        return error, None, None
    return str(payload)[:300], None, None


def _parse_usage(raw: dict[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )
