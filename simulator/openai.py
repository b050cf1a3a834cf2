"""The simulated OpenAI: /v1/models and /v1/chat/completions, streamed or whole, with faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from simulator.replies import (
    FAULT_MARKER,
    TOKENS_MARKER,
    exact_tokens,
    last_user_text,
    reply_text,
    split_chunks,
    tokens_module,
    truncate,
)

OPENAI_FAULTS = frozenset(
    {"500", "429", "quota", "cut", "nousage", "stream_error", "context", "slow"}
)

DEFAULT_MODELS = (
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-0301",
    "gpt-3.5-turbo-0613",
    "gpt-4",
    "gpt-4-0613",
    "gpt-4-32k",
    "gpt-4-turbo",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o1",
    "o1-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
)


def openai_error(
    status: int, message: str, etype: str, code: str | None, **kw: Any
) -> web.Response:
    body = {
        "error": {"message": message, "type": etype, "param": kw.pop("param", None), "code": code}
    }
    return web.json_response(body, status=status, headers=kw.pop("headers", None))


class OpenAIRoutes:
    """The OpenAI half of `Simulator` (a mixin: the settings and plumbing are the simulator's)."""

    latency: float
    api_key: str | None
    models: frozenset[str]
    slow_seconds: float
    _closing: asyncio.Event

    if TYPE_CHECKING:

        async def _pause(self, seconds: float) -> None: ...

        async def _json_body(self, request: web.Request) -> dict[str, Any]: ...

        def _take_armed(self, target: str) -> str | None: ...

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "simulator"}
            for m in sorted(self.models)
        ]
        return web.json_response({"object": "list", "data": data})

    def _known_model(self, model: str) -> bool:
        if model in self.models:
            return True
        base, _, suffix = model.rpartition("-")
        return bool(base) and base in self.models and suffix.isdigit()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.api_key:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {self.api_key}":
                return openai_error(
                    401,
                    "Incorrect API key provided. You can find your API key in the dashboard.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
        body = await self._json_body(request)
        model = str(body.get("model") or "")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(
                400, "'messages' must be a non-empty array", "invalid_request_error", None
            )
        if not self._known_model(model):
            return openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        reasoning = bool(re.match(r"^(?:o\d|gpt-5)", model))
        if reasoning and body.get("max_tokens") is not None:
            return openai_error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                param="max_tokens",
            )
        prompt_text = last_user_text(messages)
        markers = set(FAULT_MARKER.findall(prompt_text))
        armed = self._take_armed("openai")
        if armed:
            markers.add(armed)
        early = self._early_fault(markers, model)
        if early is not None:
            return early

        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        tokens = tokens_module()
        wanted = TOKENS_MARKER.search(prompt_text)
        plain = TOKENS_MARKER.sub(
            "", FAULT_MARKER.sub("", prompt_text)
        ).strip()  # faults keep the reply
        if wanted:
            text = exact_tokens(model, plain, int(wanted.group(1)))
        else:
            text = reply_text(plain)
        finish = "stop"
        if isinstance(limit, int) and limit >= 0 and tokens.count_text(model, text) > limit:
            text = truncate(model, text, limit)
            finish = "length"
        try:
            prompt_tokens = tokens.count_messages(model, messages)
        except ValueError as exc:  # includes UnknownModel; non-string contents
            return openai_error(400, str(exc), "invalid_request_error", None, param="messages")
        completion_tokens = tokens.count_text(model, text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        ident = (
            "chatcmpl-sim"
            + hashlib.sha256(f"{time.time_ns()}{prompt_text}".encode()).hexdigest()[:24]
        )
        if not body.get("stream"):
            return await self._chat_whole(request, ident, model, text, finish, usage, markers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._chat_stream(
            request, ident, model, text, finish, usage if include_usage else None, markers
        )

    def _early_fault(self, markers: set[str], model: str) -> web.Response | None:
        if "500" in markers:
            return openai_error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if "429" in markers:
            return openai_error(
                429,
                f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, "
                "Requested 1. Please try again in 20ms.",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": "0", "x-ratelimit-remaining-requests": "0"},
            )
        if "quota" in markers:
            return openai_error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            )
        if "context" in markers:
            return openai_error(
                400,
                "This model's maximum context length is 8192 tokens. However, your messages "
                "resulted in 9000 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
                param="messages",
            )
        return None

    def _chunk(self, ident: str, model: str, **kw: Any) -> dict[str, Any]:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_simulator",
            "choices": [],
        }
        chunk.update(kw)
        return chunk

    async def _chat_stream(
        self,
        request: web.Request,
        ident: str,
        model: str,
        text: str,
        finish: str,
        usage: dict[str, Any] | None,
        markers: set[str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            payload = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
            await resp.write(f"data: {payload}\n\n".encode())

        chunks = split_chunks(text)
        if "cut" in markers or "stream_error" in markers:
            chunks = chunks[: max(1, len(chunks) // 2)]
        usage_field: dict[str, Any] = {"usage": None} if usage is not None else {}

        def delta_chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return self._chunk(ident, model, choices=[choice], **usage_field)

        await send(delta_chunk({"role": "assistant", "content": "", "refusal": None}))
        for i, piece in enumerate(chunks):
            await self._pause(self.latency)
            await send(delta_chunk({"content": piece}))
            if "slow" in markers and i == 0:
                await self._pause(self.slow_seconds)
                if self._closing.is_set():
                    break
        if "cut" in markers:
            # Drop the connection without the chunked terminator: the client sees a broken stream.
            if request.transport is not None:
                request.transport.close()
            return resp
        if "stream_error" in markers:
            await send(
                {
                    "error": {
                        "message": "The server had an error while processing your request.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            await resp.write_eof()
            return resp
        await send(delta_chunk({}, finish))
        if usage is not None and "nousage" not in markers:
            await send(self._chunk(ident, model, choices=[], usage=usage))
        await send("[DONE]")
        await resp.write_eof()
        return resp

    async def _chat_whole(
        self,
        request: web.Request,
        ident: str,
        model: str,
        text: str,
        finish: str,
        usage: dict[str, Any],
        markers: set[str],
    ) -> web.StreamResponse:
        await self._pause(self.latency)
        if "slow" in markers:
            await self._pause(self.slow_seconds)
        if "cut" in markers and request.transport is not None:
            request.transport.close()
            return web.Response(status=500)
        body = {
            "id": ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_simulator",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
        }
        if "nousage" not in markers:
            body["usage"] = usage
        return web.json_response(body)
