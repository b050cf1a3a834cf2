"""A short lock in the shared Store, so several bot processes do not interleave one user's
queue or refresh the access_token twice. A local asyncio.Lock first keeps one process from
spinning against itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from weakref import WeakValueDictionary

from bot.store.base import Store
from bot.store.keys import wx_lock_key


class LockTimeout(RuntimeError):
    """Another process held the lock for longer than we were willing to wait."""


class KvLocks:
    """Named locks over a Store: `add` with a ttl takes it, so a crashed holder frees it."""

    def __init__(self, kv: Store, *, ttl: float = 30.0, wait: float = 10.0) -> None:
        self.kv = kv
        self.ttl = ttl
        self.wait = wait
        self._local: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        local = self._local.get(name)
        if local is None:
            local = asyncio.Lock()
            self._local[name] = local
        async with local:
            key = wx_lock_key(name)
            token = uuid.uuid4().hex
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait
            delay = 0.005
            while not await self.kv.add(key, token, ttl=self.ttl):
                if loop.time() > deadline:
                    raise LockTimeout(name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            try:
                yield
            finally:
                if await self.kv.get(key) == token:
                    await self.kv.delete(key)
