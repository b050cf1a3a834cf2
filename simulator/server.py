"""A simulated upstream: OpenAI chat completions and midjourney-proxy on one local port.

Tests, demos and operators' dry runs talk to it instead of the real services. Replies are
deterministic (derived from a hash of the prompt), usage is counted with `billing.tokens` (the
same counts the bot bills), and faults come on request: a marker such as `[[fault:cut]]` in the
last user message or the Midjourney prompt, or `POST /_sim/fault {"fault": "500", "count": 2}`
to arm one for the next requests. `GET /_sim/stats` tells tests what was asked.

Markers: `[[fault:500]]`, `[[fault:429]]` (rate_limit_exceeded, Retry-After 0),
`[[fault:quota]]`, `[[fault:cut]]` (connection dropped after some deltas, no usage),
`[[fault:nousage]]`, `[[fault:stream_error]]`, `[[fault:context]]`, `[[fault:slow]]` (one delta,
then silence), `[[tokens:N]]` (a reply of exactly N tokens); Midjourney: `[[fault:fail]]`,
`[[fault:slow]]` (never finishes), `[[fault:queue_full]]` (23), `[[fault:banned]]` (24),
`[[fault:exists]]` (21), `[[fault:queued]]` (22).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

log = logging.getLogger(__name__)

OPENAI_FAULTS = frozenset(
    {"500", "429", "quota", "cut", "nousage", "stream_error", "context", "slow"}
)
MJ_FAULTS = frozenset({"fail", "slow", "queue_full", "banned", "exists", "queued"})

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

_FAULT = re.compile(r"\[\[fault:([a-z0-9_]+)\]\]")
_TOKENS = re.compile(r"\[\[tokens:(\d+)\]\]")

_SENTENCES = (
    "The quick answer is that good ideas grow from small steps and careful notes.",
    "A simple plan helps you see what matters first, then you can test it again.",
    "Many people find that reading a little every day makes the work feel lighter.",
    "When the weather is calm, a long walk by the river clears the mind.",
    "Try to write down one question, look for two sources, and compare what they say.",
    "The best tools are the ones you understand well enough to trust.",
    "Good code is easy to read, easy to change, and honest about its limits.",
    "A warm cup of tea and a quiet room can turn a hard task into a fair one.",
    "This is a simulated reply, so the sentences come from a short list.",
    "Every word of it was counted with the same tokenizer the bot bills with.",
)

_OPENERS = (
    "Sure.",
    "Here is a short answer.",
    "Good question.",
    "Let me think about that.",
    "In short:",
    "Happy to help.",
)


# --- tokens ---------------------------------------------------------------------------


def _tokens():  # -> module billing.tokens
    """billing.tokens, imported late so the rest of the simulator loads without it."""
    from billing import tokens

    return tokens


def _truncate(model: str, text: str, limit: int) -> str:
    """The longest prefix of `text` that counts at most `limit` tokens."""
    tokens = _tokens()
    if tokens.count_text(model, text) <= limit:
        return text
    enc = tokens.encoding_for(model)
    ids = enc.encode(text)
    cut = min(limit, len(ids))
    while cut > 0:
        prefix = enc.decode(ids[:cut])
        if tokens.count_text(model, prefix) <= limit:
            return prefix
        cut -= 1
    return ""


# --- replies ----------------------------------------------------------------------------


def reply_text(prompt: str, sentences: int | None = None) -> str:
    """A deterministic, readable English reply for a prompt."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    count = sentences if sentences is not None else rng.randint(1, 3)
    start = rng.randrange(len(_SENTENCES))
    chosen = [_SENTENCES[(start + i) % len(_SENTENCES)] for i in range(count)]
    return " ".join([rng.choice(_OPENERS), *chosen])


def _exact_tokens(model: str, prompt: str, n: int) -> str:
    """A reply that counts exactly `n` tokens (as exact as BPE allows)."""
    if n <= 0:
        return ""
    tokens = _tokens()
    text = reply_text(prompt, sentences=n // 8 + 2)
    while tokens.count_text(model, text) < n:
        text += " " + reply_text(text, sentences=len(_SENTENCES))
    return _truncate(model, text, n)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _split_chunks(text: str) -> list[str]:
    """Split into stream deltas of one or two words, keeping every character."""
    words = re.findall(r"\s*\S+", text)
    if not words:
        return []
    chunks = ["".join(words[i : i + 2]) for i in range(0, len(words), 2)]
    tail = text[sum(map(len, chunks)) :]
    if tail:
        chunks[-1] += tail
    return chunks


def _png(seed: str, size: int = 32) -> bytes:
    """A small valid PNG, one colour per seed (no imaging library needed)."""
    digest = hashlib.sha256(seed.encode()).digest()
    rgb = bytes(digest[:3])
    row = b"\x00" + rgb * size
    raw = row * size

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _openai_error(status: int, message: str, etype: str, code: str | None, **kw: Any):
    body = {
        "error": {"message": message, "type": etype, "param": kw.pop("param", None), "code": code}
    }
    return web.json_response(body, status=status, headers=kw.pop("headers", None))


# --- Midjourney tasks -------------------------------------------------------------------


@dataclass
class _Task:
    id: str
    action: str
    prompt: str
    created: float
    duration: float
    fault: str | None = None
    parent: str | None = None
    index: int | None = None
    notify_hook: str | None = None
    base: str = ""
    start_delay: float = 0.0
    last_status: str = ""
    hash: str = ""

    def view(self, now: float) -> dict[str, Any]:
        """The task as the proxy's fetch returns it, computed from the time elapsed."""
        elapsed = now - self.created - self.start_delay
        status, progress = "IN_PROGRESS", "0%"
        image_url = None
        fail_reason = None
        finish = None
        if elapsed < 0:
            status = "NOT_START"
        elif self.fault == "slow":
            progress = "1%"
        elif self.fault == "fail" and elapsed >= self.duration / 2:
            status, fail_reason = "FAILURE", "[Invalid parameter] simulated failure"
            finish = self.created + self.start_delay + self.duration / 2
        elif elapsed >= self.duration:
            status, progress = "SUCCESS", "100%"
            image_url = f"{self.base}/mj/image/{self.id}.png"
            finish = self.created + self.start_delay + self.duration
        elif elapsed < self.duration * 0.1:
            status = "SUBMITTED"
        else:
            progress = f"{min(99, int(100 * elapsed / self.duration))}%"
            image_url = None
        return {
            "id": self.id,
            "action": self.action,
            "status": status,
            "prompt": self.prompt,
            "promptEn": self.prompt,
            "description": f"/{self.action.lower()} {self.prompt}",
            "state": None,
            "submitTime": int(self.created * 1000),
            "startTime": int((self.created + self.start_delay) * 1000),
            "finishTime": int(finish * 1000) if finish else None,
            "progress": progress,
            "imageUrl": image_url,
            "failReason": fail_reason,
            "properties": {"finalPrompt": self.prompt, "discordInstanceId": "sim"},
            "buttons": self.buttons() if status == "SUCCESS" else [],
        }

    def buttons(self) -> list[dict[str, Any]]:
        def button(custom: str, label: str, emoji: str = "") -> dict[str, Any]:
            return {"customId": custom, "emoji": emoji, "label": label, "type": 2, "style": 2}

        h = self.hash
        if self.action == "UPSCALE":
            return [
                button(f"MJ::JOB::high_variation::1::{h}::SOLO", "Vary (Strong)", "🪄"),
                button(f"MJ::JOB::low_variation::1::{h}::SOLO", "Vary (Subtle)", "🪄"),
            ]
        out = [button(f"MJ::JOB::upsample::{i}::{h}", f"U{i}") for i in range(1, 5)]
        out.append(button(f"MJ::JOB::reroll::0::{h}::SOLO", "", "🔄"))
        out += [button(f"MJ::JOB::variation::{i}::{h}", f"V{i}") for i in range(1, 5)]
        return out


# --- the server -------------------------------------------------------------------------


@dataclass
class Simulator:
    """A running simulated upstream. Use `start_simulator` to make one."""

    latency: float = 0.0
    mj_duration: float = 0.3
    api_key: str | None = None
    mj_secret: str | None = None
    models: frozenset[str] = frozenset(DEFAULT_MODELS)
    slow_seconds: float = 3600.0
    url: str = ""
    stats: Counter = field(default_factory=Counter)
    requests: list[tuple[str, Any]] = field(default_factory=list)
    tasks: dict[str, _Task] = field(default_factory=dict)
    _armed: list[list[Any]] = field(default_factory=list)
    _children: dict[tuple[str, str, int], str] = field(default_factory=dict)
    _next_id: int = 0
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _background: set[asyncio.Task] = field(default_factory=set)
    _hooks: ClientSession | None = None

    @property
    def openai_url(self) -> str:
        """The OPENAI_BASE_URL to give a client."""
        return self.url + "/v1"

    @property
    def mj_url(self) -> str:
        """The MJ_BASE_URL to give a client (the server root; paths start with /mj)."""
        return self.url

    def arm(self, fault: str, count: int = 1, target: str | None = None) -> None:
        """Make the next `count` requests of `target` ("openai"/"mj") fail with `fault`."""
        fault = fault.removeprefix("[[fault:").removesuffix("]]")
        if target is None:
            target = "openai" if fault in OPENAI_FAULTS else "mj"
        known = OPENAI_FAULTS if target == "openai" else MJ_FAULTS
        if fault not in known:
            raise ValueError(f"unknown {target} fault {fault!r}")
        self._armed.append([target, fault, max(1, count)])

    def _take_armed(self, target: str) -> str | None:
        for entry in self._armed:
            if entry[0] == target:
                entry[2] -= 1
                if entry[2] <= 0:
                    self._armed.remove(entry)
                return entry[1]
        return None

    def build_app(self) -> web.Application:
        """The aiohttp application (also usable inside another server or a test client)."""
        app = web.Application(middlewares=[self._count])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/mj/submit/imagine", self._mj_imagine)
        app.router.add_post("/mj/submit/change", self._mj_change)
        app.router.add_post("/mj/submit/action", self._mj_action)
        app.router.add_get("/mj/task/{id}/fetch", self._mj_fetch)
        app.router.add_post("/mj/task/list-by-condition", self._mj_list)
        app.router.add_get("/mj/image/{id}.png", self._mj_image)
        app.router.add_post("/_sim/fault", self._sim_fault)
        app.router.add_get("/_sim/stats", self._sim_stats)
        return app

    async def close(self) -> None:
        """Stop serving; hanging streams and slow tasks end at once."""
        self._closing.set()
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._hooks is not None:
            await self._hooks.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- plumbing ---

    @web.middleware
    async def _count(self, request: web.Request, handler):
        route = request.match_info.route.resource
        path = route.canonical if route is not None else request.path
        self.stats["total"] += 1
        self.stats[f"{request.method} {path}"] += 1
        return await handler(request)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up when the simulator closes."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="invalid JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        self.requests.append((request.path, body))
        return body

    # --- OpenAI ---

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
                return _openai_error(
                    401,
                    "Incorrect API key provided. You can find your API key in the dashboard.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
        body = await self._json_body(request)
        model = str(body.get("model") or "")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_error(
                400, "'messages' must be a non-empty array", "invalid_request_error", None
            )
        if not self._known_model(model):
            return _openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        reasoning = bool(re.match(r"^(?:o\d|gpt-5)", model))
        if reasoning and body.get("max_tokens") is not None:
            return _openai_error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                param="max_tokens",
            )
        prompt_text = _last_user_text(messages)
        markers = set(_FAULT.findall(prompt_text))
        armed = self._take_armed("openai")
        if armed:
            markers.add(armed)
        early = self._early_fault(markers, model)
        if early is not None:
            return early

        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        tokens = _tokens()
        wanted = _TOKENS.search(prompt_text)
        plain = _TOKENS.sub("", _FAULT.sub("", prompt_text)).strip()  # faults keep the reply
        if wanted:
            text = _exact_tokens(model, plain, int(wanted.group(1)))
        else:
            text = reply_text(plain)
        finish = "stop"
        if isinstance(limit, int) and limit >= 0 and tokens.count_text(model, text) > limit:
            text = _truncate(model, text, limit)
            finish = "length"
        try:
            prompt_tokens = tokens.count_messages(model, messages)
        except ValueError as exc:  # includes UnknownModel; non-string contents
            return _openai_error(400, str(exc), "invalid_request_error", None, param="messages")
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
            return _openai_error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if "429" in markers:
            return _openai_error(
                429,
                f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, "
                "Requested 1. Please try again in 20ms.",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": "0", "x-ratelimit-remaining-requests": "0"},
            )
        if "quota" in markers:
            return _openai_error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            )
        if "context" in markers:
            return _openai_error(
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

        chunks = _split_chunks(text)
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

    # --- midjourney-proxy ---

    def _check_secret(self, request: web.Request) -> None:
        if self.mj_secret and request.headers.get("mj-api-secret") != self.mj_secret:
            raise web.HTTPUnauthorized(
                text=json.dumps({"code": 401, "description": "invalid mj-api-secret"}),
                content_type="application/json",
            )

    def _new_id(self) -> str:
        self._next_id += 1
        return str(int(time.time() * 1000) * 1000 + self._next_id)

    def _base(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _new_task(
        self,
        request: web.Request,
        action: str,
        prompt: str,
        fault: str | None,
        notify_hook: Any,
        parent: str | None = None,
        index: int | None = None,
    ) -> _Task:
        task_id = self._new_id()
        task = _Task(
            id=task_id,
            action=action,
            prompt=prompt,
            created=time.time(),
            duration=self.mj_duration,
            fault=fault,
            parent=parent,
            index=index,
            notify_hook=notify_hook if isinstance(notify_hook, str) and notify_hook else None,
            base=self._base(request),
            start_delay=self.mj_duration / 3 if fault == "queued" else 0.0,
            hash=hashlib.sha256(task_id.encode()).hexdigest()[:8]
            + "-sim-"
            + hashlib.sha256(prompt.encode()).hexdigest()[:12],
        )
        self.tasks[task_id] = task
        if task.notify_hook:
            self._spawn(self._notify_loop(task))
        return task

    def _submit_answer(self, task: _Task, fault: str | None) -> web.Response:
        if fault == "queued":
            return web.json_response(
                {
                    "code": 22,
                    "description": "In queue, there are 1 tasks ahead",
                    "result": task.id,
                    "properties": {"numberOfQueues": 1, "discordInstanceId": "sim"},
                }
            )
        return web.json_response(
            {
                "code": 1,
                "description": "Submit success",
                "result": task.id,
                "properties": {"discordInstanceId": "sim"},
            }
        )

    def _refusal(self, fault: str | None, prompt: str) -> web.Response | None:
        if fault == "queue_full":
            return web.json_response(
                {"code": 23, "description": "Queue is full, please try again later", "result": None}
            )
        if fault == "banned":
            return web.json_response(
                {
                    "code": 24,
                    "description": "May contain sensitive words",
                    "properties": {"promptEn": prompt, "bannedWord": "fault"},
                }
            )
        return None

    async def _mj_imagine(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        prompt = str(body.get("prompt") or "").strip()
        if not prompt:
            return web.json_response({"code": 4, "description": "prompt cannot be empty"})
        markers = [m for m in _FAULT.findall(prompt) if m in MJ_FAULTS]
        fault = self._take_armed("mj") or (markers[0] if markers else None)
        refused = self._refusal(fault, prompt)
        if refused is not None:
            return refused
        if fault == "exists":
            for old in self.tasks.values():
                if old.action == "IMAGINE" and old.prompt == prompt:
                    return self._exists(old)
            task = self._new_task(request, "IMAGINE", prompt, None, body.get("notifyHook"))
            return self._exists(task)
        task = self._new_task(request, "IMAGINE", prompt, fault, body.get("notifyHook"))
        return self._submit_answer(task, fault)

    def _exists(self, task: _Task) -> web.Response:
        view = task.view(time.time())
        return web.json_response(
            {
                "code": 21,
                "description": "Task already exists",
                "result": task.id,
                "properties": {"status": view["status"], "imageUrl": view["imageUrl"]},
            }
        )

    async def _child(
        self, request: web.Request, body: dict[str, Any], parent_id: str, action: str, index: int
    ) -> web.Response:
        parent = self.tasks.get(parent_id)
        if parent is None:
            return web.json_response({"code": 3, "description": "Related task does not exist"})
        if parent.view(time.time())["status"] != "SUCCESS":
            return web.json_response(
                {"code": 4, "description": "Related task status error: not finished"}
            )
        if parent.action == "UPSCALE":
            return web.json_response(
                {"code": 4, "description": "An upscaled image cannot be changed this way"}
            )
        fault = self._take_armed("mj")
        refused = self._refusal(fault, parent.prompt)
        if refused is not None:
            return refused
        key = (parent_id, action, index)
        if action == "UPSCALE" or fault == "exists":
            existing = self._children.get(key)
            if existing is not None:
                return self._exists(self.tasks[existing])
        task = self._new_task(
            request, action, parent.prompt, fault, body.get("notifyHook"), parent_id, index
        )
        self._children[key] = task.id
        return self._submit_answer(task, fault)

    async def _mj_change(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        action = str(body.get("action") or "").upper()
        if action not in ("UPSCALE", "VARIATION", "REROLL"):
            return web.json_response({"code": 4, "description": "action is invalid"})
        try:
            index = int(body.get("index") or 0)
        except (TypeError, ValueError):
            index = 0
        if action == "REROLL":
            index = 0
        elif not 1 <= index <= 4:
            return web.json_response({"code": 4, "description": "index must be 1 to 4"})
        return await self._child(request, body, str(body.get("taskId") or ""), action, index)

    async def _mj_action(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        custom = str(body.get("customId") or "")
        match = re.match(r"^MJ::JOB::(upsample|variation|reroll)::(\d+)::", custom)
        if not match:
            return web.json_response({"code": 4, "description": "customId is not supported"})
        kind, index = match.groups()
        action = {"upsample": "UPSCALE", "variation": "VARIATION", "reroll": "REROLL"}[kind]
        parent_id = str(body.get("taskId") or "")
        parent = self.tasks.get(parent_id)
        if parent is not None and parent.hash not in custom:
            return web.json_response({"code": 4, "description": "customId does not match task"})
        return await self._child(request, body, parent_id, action, int(index))

    async def _mj_fetch(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.Response(status=404, text="")
        return web.json_response(task.view(time.time()))

    async def _mj_list(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        ids = body.get("ids") or []
        now = time.time()
        out = [self.tasks[i].view(now) for i in ids if isinstance(i, str) and i in self.tasks]
        return web.json_response(out)

    async def _mj_image(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        if task_id not in self.tasks:
            raise web.HTTPNotFound()
        return web.Response(body=_png(task_id), content_type="image/png")

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify_loop(self, task: _Task) -> None:
        """POST the task to its notifyHook on every status change: best effort, no retries."""
        step = max(0.02, task.duration / 10)
        while not self._closing.is_set():
            view = task.view(time.time())
            if view["status"] != task.last_status:
                task.last_status = view["status"]
                await self._post_hook(task.notify_hook or "", view)
            if view["status"] in ("SUCCESS", "FAILURE", "CANCEL"):
                return
            await self._pause(step)

    async def _post_hook(self, url: str, payload: dict[str, Any]) -> None:
        if self._hooks is None:
            self._hooks = ClientSession(timeout=ClientTimeout(total=5))
        try:
            async with self._hooks.post(url, json=payload) as resp:
                await resp.read()
        except Exception as exc:  # best effort, like the real proxy
            log.debug("notifyHook %s failed: %s", url, exc)

    # --- test controls ---

    async def _sim_fault(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        try:
            self.arm(str(body.get("fault") or ""), int(body.get("count") or 1), body.get("target"))
        except ValueError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "armed": [list(a) for a in self._armed]})

    async def _sim_stats(self, request: web.Request) -> web.Response:
        paths = {k: v for k, v in self.stats.items() if k != "total"}
        return web.json_response(
            {"total": self.stats["total"], "paths": paths, "tasks": len(self.tasks)}
        )


async def start_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    latency: float = 0.0,
    mj_duration: float = 0.3,
    api_key: str | None = None,
    mj_secret: str | None = None,
    models: tuple[str, ...] | None = None,
    slow_seconds: float = 3600.0,
) -> Simulator:
    """Serve the simulated OpenAI and midjourney-proxy APIs; `port=0` picks a free port.

    `latency` is the pause before each streamed chunk; `mj_duration` how long a Midjourney
    task takes to finish; `api_key`/`mj_secret`, when given, are required of clients.
    """
    sim = Simulator(
        latency=latency,
        mj_duration=mj_duration,
        api_key=api_key or None,
        mj_secret=mj_secret or None,
        models=frozenset(models or DEFAULT_MODELS),
        slow_seconds=slow_seconds,
    )
    runner = web.AppRunner(sim.build_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sim._runner = runner
    sockets = runner.addresses
    bound_port = sockets[0][1] if sockets else port
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    sim.url = f"http://{shown}:{bound_port}"
    return sim
