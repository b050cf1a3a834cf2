"""Getting replies to WeChat users: what is waiting, and how it goes out.

- `Item`: one WeChat message to deliver (a text of at most 2048 bytes, or an image media_id).
- `Outbox`: a user's undelivered items, in the shared Store, in order. Customer-service mode
  keeps what WeChat refused (45015 outside the 48-hour window, 45047 too many messages) and
  sends it after the user's next message; passive mode keeps what did not fit in an answer
  and hands it out one item per "1".
- `Answers` (passive mode): the one item that answers a MsgId, shared by WeChat's retries of
  it, whichever process they reach; the last retry may give up and leave it to the outbox.
- `Busy`: users whose work outlived its request (the last try said "reply 1"), so a "1" can
  say "not ready yet" instead of treating "1" as a new question.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from weakref import WeakValueDictionary

from adapters.wechat.api import KEEP_FOR_LATER, WeChatApi, WeChatApiError
from adapters.wechat.kvlock import KvLocks
from bot.store.base import Store
from bot.store.keys import wx_answer_key, wx_busy_set, wx_outbox_key, wx_user_lock

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
GAVE_UP = Item("gave_up")  # the last try answered "reply 1": the answer goes to the outbox


def text_item(text: str) -> Item:
    return Item("text", text=text)


class Outbox:
    """A user's queue of undelivered items. Callers hold the user's lock (`KvLocks`)."""

    def __init__(self, kv: Store) -> None:
        self.kv = kv

    @staticmethod
    def _key(openid: str) -> str:
        return wx_outbox_key(openid)

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
    """Users with work that outlived its request (the last try said "reply 1"), with a
    deadline so a crashed process does not leave a user "busy" for ever. Work answered within
    its tries never needs marking, which saves two writes per message."""

    def __init__(self, kv: Store, ttl: float = 900.0) -> None:
        self.kv = kv
        self.ttl = ttl

    async def start(self, openid: str, key: str) -> str:
        member = f"{key}|{time.time() + self.ttl:.0f}"
        await self.kv.sadd(wx_busy_set(openid), member)
        return member

    async def stop(self, openid: str, key: str) -> None:
        for member in await self.kv.smembers(wx_busy_set(openid)):
            if member.rsplit("|", 1)[0] == key:
                await self.kv.srem(wx_busy_set(openid), member)

    async def active(self, openid: str, *, besides: str = "") -> bool:
        """True if work other than request `besides` is running for the user."""
        now = time.time()
        for member in await self.kv.smembers(wx_busy_set(openid)):
            key, deadline = member.rsplit("|", 1)
            if float(deadline) > now:
                if key != besides:
                    return True
                continue
            await self.kv.srem(wx_busy_set(openid), member)
        return False


class CustomerService:
    """Customer-service mode: send now, keep what WeChat refuses for the user's next message."""

    def __init__(self, api: WeChatApi, outbox: Outbox, locks: KvLocks) -> None:
        self.api = api
        self.outbox = outbox
        self.locks = locks
        self._users: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    def _local(self, openid: str) -> asyncio.Lock:
        lock = self._users.get(openid)
        if lock is None:
            lock = asyncio.Lock()
            self._users[openid] = lock
        return lock

    async def deliver(self, openid: str, items: list[Item]) -> None:
        """Send whatever was kept for the user, then `items`, in order; keep the rest on 45015
        / 45047 or when WeChat cannot be reached.

        The common case (nothing kept) sends without touching the shared lock; the outbox is
        read and rewritten only under it.
        """
        async with self._local(openid):
            if not await self.outbox.load(openid):
                rest = await self._send_all(openid, items)
                if rest:
                    async with self.locks.hold(wx_user_lock(openid)):
                        await self.outbox.push(openid, rest)
                return
            async with self.locks.hold(wx_user_lock(openid)):
                queue = [*await self.outbox.load(openid), *items]
                await self.outbox.save(openid, await self._send_all(openid, queue))

    async def flush(self, openid: str) -> bool:
        """Deliver what was kept (the user just wrote: the window is open again). True if
        anything was waiting."""
        if not await self.outbox.load(openid):
            return False
        await self.deliver(openid, [])
        return True

    async def _send_all(self, openid: str, queue: list[Item]) -> list[Item]:
        """Send in order; return what must be kept for later."""
        for sent, item in enumerate(queue):
            try:
                if item.kind == "text":
                    await self.api.send_text(openid, item.text)
                elif item.kind == "image":
                    await self.api.send_image(openid, item.media_id)
            except WeChatApiError as exc:
                left = len(queue) - sent
                if exc.errcode in KEEP_FOR_LATER or exc.errcode < 0:
                    log.info("wechat: kept %d message(s) for later (%s)", left, exc)
                    return queue[sent:]
                log.warning("wechat: dropped %d message(s): %s", left, exc)
                return []
        return []


class Answers:
    """Passive mode: the item answering each MsgId, agreed once for all its retries.

    The answer key is claimed atomically (`add`), by the work's first item or by the last
    try giving up, whichever comes first; what loses goes to the outbox.
    """

    def __init__(self, kv: Store, outbox: Outbox, locks: KvLocks, busy: Busy) -> None:
        self.kv = kv
        self.outbox = outbox
        self.locks = locks
        self.busy = busy
        self._ready: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}
        self.local: set[str] = set()  # requests whose work runs in this process
        self._mine: dict[str, Item] = {}  # answers claimed here: no Store read to find them

    async def _claim(self, key: str, item: Item) -> bool:
        payload = json.dumps(item.dump(), ensure_ascii=False)
        if not await self.kv.add(wx_answer_key(key), payload, ttl=ANSWER_TTL):
            return False
        if key in self.local:
            self._mine[key] = item
        return True

    async def offer(self, key: str, openid: str, items: list[Item]) -> None:
        """The first item answers the request (unless its last try already gave up);
        everything else waits in the outbox for "1"."""
        if not items:
            return
        if len(items) == 1:  # the usual case: one claim, no lock
            if not await self._claim(key, items[0]) and items[0].kind != "empty":
                async with self.locks.hold(wx_user_lock(openid)):
                    await self.outbox.push(openid, items)
        else:  # the rest must be in the outbox before a try renders "reply 1 for more"
            async with self.locks.hold(wx_user_lock(openid)):
                rest = items[1:] if await self._claim(key, items[0]) else items
                await self.outbox.push(openid, [i for i in rest if i.kind != "empty"])
        event = self._ready.get(key)
        if event is not None:
            event.set()

    async def finish(self, key: str, openid: str) -> None:
        """The work is over: a request that produced nothing is answered with nothing, and
        a request given up on is no longer "still working"."""
        answer = self._mine.pop(key, None) or await self.get(key)
        if answer is None:
            await self.offer(key, openid, [EMPTY])
            answer = self._mine.pop(key, None) or await self.get(key)
        if answer is not None and answer.kind == GAVE_UP.kind:
            async with self.locks.hold(wx_user_lock(openid)):
                await self.busy.stop(openid, key)

    async def get(self, key: str) -> Item | None:
        raw = await self.kv.get(wx_answer_key(key))
        return Item.load(json.loads(raw)) if raw else None

    async def wait(self, key: str, seconds: float, poll: float = 0.1) -> Item | None:
        """The answer as soon as it exists, or None. Work running in this process signals
        it; work in another process is polled for every `poll` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        event = self._ready.setdefault(key, asyncio.Event())  # before the first look: no gap
        self._waiting[key] = self._waiting.get(key, 0) + 1
        look = key not in self.local
        try:
            while True:
                # Work running here hands its answer over in memory (and sets the event);
                # the Store is read for work elsewhere, and now and then as a safety net.
                item = self._mine.get(key)
                if item is None and (look or key not in self.local):
                    item = await self.get(key)
                if item is not None:
                    return item
                left = deadline - loop.time()
                if left <= 0:
                    return None
                step = 1.0 if key in self.local else poll
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(step, left))
                look = True
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:  # the last waiter of this key cleans up
                del self._waiting[key]
                self._ready.pop(key, None)

    async def give_up(self, key: str, openid: str) -> Item:
        """WeChat's last try is ending: take the answer if it just arrived, else claim the
        request as given up (GAVE_UP), so its answer goes to the outbox."""
        async with self.locks.hold(wx_user_lock(openid)):
            if await self._claim(key, GAVE_UP):
                await self.busy.start(openid, key)
                return GAVE_UP
            return await self.get(key) or GAVE_UP
