"""A tiny stand-in for `bot.core.Core` with the agreed API, for the front end's own rules
(retries, delivery modes, hostile input). It counts what it would charge; the end-to-end
tests use the real Core and check the wallet ledger instead."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bot.events import Action, Delivery, Event, FinalText, ImageResult, Progress, TextDelta
from bot.store.base import Store


class FakeCore:
    def __init__(self, kv: Store, image_url: str = "", delay: float = 0.0) -> None:
        self.kv = kv
        self.image_url = image_url
        self.delay = delay  # how long a chat reply takes
        self.charges: Counter[str] = Counter()  # user -> replies charged
        self.handled: list[str] = []  # texts the core was asked to answer
        self.pressed: list[str] = []
        self.trials: set[str] = set()
        self.sinks: dict[str, Callable[[Delivery], Awaitable[None]]] = {}
        self.release = asyncio.Event()  # for "[[wait]]": the reply comes when this is set
        self._seen: set[str] = set()

    async def handle(self, msg: Any, *, stop: asyncio.Event | None = None) -> AsyncIterator[Event]:
        if msg.message_id in self._seen:  # the core's own dedupe
            return
        self._seen.add(msg.message_id)
        self.handled.append(msg.text)
        if msg.text.startswith("/imagine "):
            yield Progress(task_id="task-1", text="正在绘制 / Drawing…", percent=0)
            yield Progress(task_id="task-1", text="50%", percent=50)
            await asyncio.sleep(self.delay)
            self.charges[msg.user_id] += 1
            yield ImageResult(
                task_id="task-1",
                url=self.image_url,
                caption="a cat",
                actions=(
                    *(Action(f"U{i}", f"mj:task-1:U{i}") for i in range(1, 5)),
                    Action("🔄", "mj:task-1:REROLL"),
                ),
            )
            return
        if "[[wait]]" in msg.text:
            await self.release.wait()
        await asyncio.sleep(self.delay)
        reply = f"echo: {msg.text}"
        if "[[long]]" in msg.text:
            reply = "长" * 1500  # 4500 bytes: three WeChat messages
        yield TextDelta(reply[:5])
        self.charges[msg.user_id] += 1
        yield FinalText(reply)

    async def press(
        self,
        platform: str,
        user_id: str,
        chat_id: str,
        data: str,
        *,
        message_id: str,
        language: str | None = None,
    ) -> AsyncIterator[Event]:
        self.pressed.append(data)
        self.charges[user_id] += 1
        yield ImageResult(task_id="task-2", url=self.image_url, caption=f"done {data}")

    def set_sink(self, platform: str, sink: Callable[[Delivery], Awaitable[None]]) -> None:
        self.sinks[platform] = sink

    async def grant_trial(self, platform: str, user_id: str, amount_milli: int) -> bool:
        if user_id in self.trials:
            return False
        self.trials.add(user_id)
        return True
