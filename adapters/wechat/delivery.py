"""Getting replies to WeChat users: what is waiting, and how it goes out.

- `Item`: one WeChat message to deliver (a text of at most 2048 bytes, or an image media_id).
- `Outbox`: a user's undelivered items, in the shared Store, in order. Customer-service mode
  keeps what WeChat refused (45015 outside the 48-hour window, 45047 too many messages) and
  sends it after the user's next message; passive mode keeps what did not fit in an answer
  and hands it out one item per "1".
- `Answers` (passive mode): the one item that answers a MsgId, shared by WeChat's retries of
  it, whichever process they reach; the last retry may give up and leave it to the outbox.
- `Busy`: which users have work running, so "1" can say "not ready yet" instead of nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass

from adapters.wechat.api import KEEP_FOR_LATER, WeChatApi, WeChatApiError
from adapters.wechat.kvlock import KvLocks
from bot.store.base import Store

log = logging.getLogger(__name__)

OUTBOX_TTL = 3 * 24 * 3600.0  # temporary media lives 3 days: nothing waits longer
ANSWER_TTL = 3600.0  # WeChat's retries come within seconds; an hour is generous


@dataclass(frozen=True, slots=True)
class Item:
    """One message for a user: `kind` "text" (with `text`), "image" (with `media_id`), or
    "empty" (the request produced nothing to say: answer "success")."""

    kind: str
    text: str = ""
    media_id: str = ""

    def dump(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def load(cls, data: dict[str, str]) -> Item:
        return cls(kind=data["kind"], text=data.get("text", ""), media_id=data.get("media_id", ""))


EMPTY = Item("empty")


def text_item(text: str) -> Item:
    return Item("text", text=text)


class Outbox:
    """A user's queue of undelivered items. Callers hold the user's lock (`KvLocks`)."""

    def __init__(self, kv: Store) -> None:
        self.kv = kv

    @staticmethod
    def _key(openid: str) -> str:
        return f"wx:outbox:{openid}"

    async def load(self, openid: str) -> list[Item]:
        raw = await self.kv.get(self._key(openid))
        return [Item.load(d) for d in json.loads(raw)] if raw else []

    async def save(self, openid: str, items: list[Item]) -> None:
        if items:
            payload = json.dumps([i.dump() for i in items], ensure_ascii=False)
            await self.kv.set(self._key(openid), payload, ttl=OUTBOX_TTL)
        else:
            await self.kv.delete(self._key(openid))

    async def push(self, openid: str, items: list[Item]) -> None:
        if items:
            await self.save(openid, [*await self.load(openid), *items])

    async def pop(self, openid: str) -> Item | None:
        items = await self.load(openid)
        if not items:
            return None
        await self.save(openid, items[1:])
        return items[0]


class Busy:
    """Users with work in flight, with a deadline so a crashed process does not leave a user
    "busy" for ever."""

    def __init__(self, kv: Store, ttl: float = 900.0) -> None:
        self.kv = kv
        self.ttl = ttl

    async def start(self, openid: str, key: str) -> str:
        member = f"{key}|{time.time() + self.ttl:.0f}"
        await self.kv.sadd(f"wx:busy:{openid}", member)
        return member

    async def stop(self, openid: str, member: str) -> None:
        await self.kv.srem(f"wx:busy:{openid}", member)

    async def active(self, openid: str, *, besides: str = "") -> bool:
        """True if work other than request `besides` is running for the user."""
        now = time.time()
        for member in await self.kv.smembers(f"wx:busy:{openid}"):
            key, deadline = member.rsplit("|", 1)
            if float(deadline) > now:
                if key != besides:
                    return True
                continue
            await self.kv.srem(f"wx:busy:{openid}", member)
        return False


class CustomerService:
    """Customer-service mode: send now, keep what WeChat refuses for the user's next message."""

    def __init__(self, api: WeChatApi, outbox: Outbox, locks: KvLocks) -> None:
        self.api = api
        self.outbox = outbox
        self.locks = locks

    async def deliver(self, openid: str, items: list[Item]) -> None:
        """Send whatever was kept for the user, then `items`, in order; keep the rest on 45015
        / 45047 or when WeChat cannot be reached."""
        async with self.locks.hold(f"user:{openid}"):
            queue = [*await self.outbox.load(openid), *items]
            sent = 0
            try:
                for item in queue:
                    await self._send(openid, item)
                    sent += 1
            except WeChatApiError as exc:
                if exc.errcode in KEEP_FOR_LATER or exc.errcode < 0:
                    log.info("wechat: kept %d message(s) for later (%s)", len(queue) - sent, exc)
                else:
                    log.warning("wechat: dropped %d message(s): %s", len(queue) - sent, exc)
                    sent = len(queue)
            await self.outbox.save(openid, queue[sent:])

    async def flush(self, openid: str) -> bool:
        """Deliver what was kept (the user just wrote: the window is open again). True if
        anything was waiting."""
        if not await self.outbox.load(openid):
            return False
        await self.deliver(openid, [])
        return True

    async def _send(self, openid: str, item: Item) -> None:
        if item.kind == "text":
            await self.api.send_text(openid, item.text)
        elif item.kind == "image":
            await self.api.send_image(openid, item.media_id)


class Answers:
    """Passive mode: the item answering each MsgId, agreed once for all its retries."""

    def __init__(self, kv: Store, outbox: Outbox, locks: KvLocks) -> None:
        self.kv = kv
        self.outbox = outbox
        self.locks = locks
        self._ready: dict[str, asyncio.Event] = {}

    async def offer(self, key: str, openid: str, items: list[Item]) -> None:
        """The first item answers the request (unless its last retry already gave up);
        everything else waits in the outbox for "1"."""
        if not items:
            return
        async with self.locks.hold(f"user:{openid}"):
            rest = items
            if await self.kv.get(f"wx:ans:{key}") is None and not await self.kv.get(
                f"wx:giveup:{key}"
            ):
                await self.kv.set(
                    f"wx:ans:{key}", json.dumps(items[0].dump(), ensure_ascii=False), ANSWER_TTL
                )
                rest = items[1:]
            await self.outbox.push(openid, [i for i in rest if i.kind != "empty"])
        event = self._ready.get(key)
        if event is not None:
            event.set()

    async def finish(self, key: str, openid: str) -> None:
        """The work is over: a request that produced nothing is answered with nothing."""
        if await self.kv.get(f"wx:ans:{key}") is None:
            await self.offer(key, openid, [EMPTY])

    async def get(self, key: str) -> Item | None:
        raw = await self.kv.get(f"wx:ans:{key}")
        return Item.load(json.loads(raw)) if raw else None

    async def wait(self, key: str, seconds: float, poll: float = 0.1) -> Item | None:
        """The answer as soon as it exists (here or in another process), or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        event = self._ready.setdefault(key, asyncio.Event())
        try:
            while True:
                item = await self.get(key)
                if item is not None:
                    return item
                left = deadline - loop.time()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(event.wait(), min(poll, left))
                except TimeoutError:
                    pass
        finally:
            if self._ready.get(key) is event:  # other waiters of this key fall back to polling
                self._ready.pop(key, None)

    async def give_up(self, key: str, openid: str) -> Item | None:
        """WeChat's last try is ending: take the answer if it just arrived, else mark the
        request so its answer goes to the outbox."""
        async with self.locks.hold(f"user:{openid}"):
            item = await self.get(key)
            if item is None:
                await self.kv.set(f"wx:giveup:{key}", "1", ttl=ANSWER_TTL)
            return item
