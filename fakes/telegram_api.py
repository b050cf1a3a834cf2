"""A fake Telegram Bot API server on loopback: records every call, misbehaves on request.

It speaks `/bot<token>/<method>` like api.telegram.org (the real aiogram Bot is pointed at it
with `TelegramAPIServer.from_base(url)`), keeps the text of the messages it "sent" so an edit
to the same text fails with "message is not modified" as Telegram's does, serves images under
`/files/<name>` and queues updates for `getUpdates`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-telegram-token"
BOT_ID = 123456
BOT_USERNAME = "creditbot_test_bot"


@dataclass
class Call:
    """One request the bot made."""

    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # field -> (name, bytes)
    at: float = 0.0
    content_type: str = ""

    def json(self, key: str) -> Any:
        value = self.params.get(key)
        return json.loads(value) if isinstance(value, str) else value


@dataclass
class Fault:
    status: int
    description: str
    retry_after: int | None = None


class FakeBotAPI:
    """The fake server; `calls` holds every request in order."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.updates: deque[dict[str, Any]] = deque()
        self.refunded: set[str] = set()
        self._ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.sent_count: dict[int, int] = defaultdict(int)  # sendMessage calls per chat
        self._sent_events: dict[int, asyncio.Event] = {}
        self._called = asyncio.Event()
        # An outage: "refuse" drops every connection unanswered, "blackhole" never answers.
        self.outage: str | None = None

    async def start(self) -> FakeBotAPI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None  # ends a blackhole
            await runner.cleanup()

    # --- test controls ---------------------------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        times: int = 1,
        status: int = 429,
        retry_after: int | None = 1,
        description: str = "",
    ) -> None:
        """The next `times` calls of `method` fail (429 with retry_after by default)."""
        if status != 429:
            retry_after = None
        text = description or (
            f"Too Many Requests: retry after {retry_after}" if status == 429 else "Internal Error"
        )
        for _ in range(times):
            self.faults[method].append(Fault(status, text, retry_after))

    async def wait_for(self, method: str, count: int = 1) -> list[Call]:
        """Wait (at most 5 s) until `method` has been called `count` times; returns those calls."""
        async with asyncio.timeout(5.0):
            while len(self.calls_to(method)) < count:
                self._called.clear()
                await self._called.wait()
        return self.calls_to(method)

    async def wait_sent(self, chat_id: int, count: int) -> None:
        """Wait until `chat_id` has received `count` messages in all (for the benchmark)."""
        while self.sent_count[chat_id] < count:
            event = self._sent_events.setdefault(chat_id, asyncio.Event())
            await event.wait()

    def calls_to(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    def texts(self, chat_id: int | None = None) -> list[str]:
        """The text of every sendMessage, in order."""
        return [
            c.params["text"]
            for c in self.calls_to("sendMessage")
            if chat_id is None or int(c.params["chat_id"]) == chat_id
        ]

    def image_url(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.url}/files/{name}"

    # --- the API -----------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    async def _handle(self, request: web.Request) -> web.Response:
        if self.outage is not None:
            while True:  # no answer while the blackhole lasts
                if self.outage != "blackhole" or self._runner is None:
                    break
                await asyncio.sleep(0.05)
            if request.transport is not None:
                request.transport.abort()  # the client sees the connection drop, no answer
            return web.Response(status=503)
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        files: dict[str, tuple[str, bytes]] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.filename:
                    files[part.name] = (part.filename, bytes(await part.read()))
                else:
                    params[part.name] = await part.text()
        elif request.content_type == "application/json":
            params = await request.json()
        else:
            params = dict(await request.post())
        self.calls.append(Call(method, params, files, time.monotonic(), request.content_type))
        self._called.set()
        if self.faults[method]:
            fault = self.faults[method].popleft()
            return _error(fault.status, fault.description, fault.retry_after)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _ok(True)
        return await handler(params, files)

    def _message(self, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Credit"},
            **extra,
        }
        self.messages[(chat_id, message["message_id"])] = {
            "text": extra.get("text"),
            "reply_markup": params.get("reply_markup"),
        }
        return message

    async def _m_getMe(self, params: dict[str, Any], files: Any) -> web.Response:
        return _ok({"id": BOT_ID, "is_bot": True, "first_name": "Credit", "username": BOT_USERNAME})

    async def _m_sendMessage(self, params: dict[str, Any], files: Any) -> web.Response:
        chat_id = int(params["chat_id"])
        self.sent_count[chat_id] += 1
        event = self._sent_events.pop(chat_id, None)
        if event is not None:
            event.set()
        return _ok(self._message(params, text=params["text"]))

    async def _m_editMessageText(self, params: dict[str, Any], files: Any) -> web.Response:
        key = (int(params["chat_id"]), int(params["message_id"]))
        stored = self.messages.get(key)
        if stored is None:
            return _error(400, "Bad Request: message to edit not found")
        if stored["text"] == params["text"] and stored["reply_markup"] == params.get(
            "reply_markup"
        ):
            return _error(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        stored.update(text=params["text"], reply_markup=params.get("reply_markup"))
        chat_id, message_id = key
        return _ok(
            {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
                "text": params["text"],
            }
        )

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any], files: Any) -> web.Response:
        key = (int(params["chat_id"]), int(params["message_id"]))
        if key in self.messages:
            self.messages[key]["reply_markup"] = params.get("reply_markup")
        return _ok(True)

    async def _m_sendPhoto(self, params: dict[str, Any], files: Any) -> web.Response:
        photo = [{"file_id": "photo1", "file_unique_id": "u1", "width": 32, "height": 32}]
        return _ok(self._message(params, photo=photo, caption=params.get("caption")))

    async def _m_sendDocument(self, params: dict[str, Any], files: Any) -> web.Response:
        document = {"file_id": "doc1", "file_unique_id": "d1"}
        return _ok(self._message(params, document=document, caption=params.get("caption")))

    async def _m_sendInvoice(self, params: dict[str, Any], files: Any) -> web.Response:
        prices = json.loads(params["prices"])
        invoice = {
            "title": params["title"],
            "description": params["description"],
            "start_parameter": "",
            "currency": params["currency"],
            "total_amount": sum(p["amount"] for p in prices),
        }
        return _ok(self._message(params, invoice=invoice))

    async def _m_refundStarPayment(self, params: dict[str, Any], files: Any) -> web.Response:
        charge = params["telegram_payment_charge_id"]
        if charge in self.refunded:
            return _error(400, "Bad Request: CHARGE_ALREADY_REFUNDED")
        self.refunded.add(charge)
        return _ok(True)

    async def _m_getUpdates(self, params: dict[str, Any], files: Any) -> web.Response:
        offset = int(params.get("offset") or 0)
        while self.updates and self.updates[0]["update_id"] < offset:
            self.updates.popleft()
        if not self.updates:
            await asyncio.sleep(0.05)
        return _ok([u for u in self.updates if u["update_id"] >= offset])


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)
