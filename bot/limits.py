"""How many requests one user may have in flight, shared by every process through the Store.

Each request takes a lease: one of `limit` slot keys, set only if absent, with a TTL so a
crashed process cannot lock a user out for longer than the lease. Long replies renew it.
"""

from __future__ import annotations

import secrets
import time

from bot.store.base import Store

DEFAULT_LEASE_SECONDS = 180.0


class Lease:
    """One held slot; `release()` frees it, `renew()` keeps it past its TTL."""

    def __init__(self, store: Store, key: str, token: str, ttl: float) -> None:
        self._store = store
        self._key = key
        self._token = token
        self._ttl = ttl
        self._renewed = time.monotonic()
        self.released = False

    async def renew(self) -> None:
        """Extend the lease when a third of it is gone (cheap to call on every delta)."""
        now = time.monotonic()
        if not self.released and now - self._renewed > self._ttl / 3:
            self._renewed = now
            await self._store.set(self._key, self._token, ttl=self._ttl)

    async def release(self) -> None:
        """Free the slot. A lease is renewed while its request runs, so the key is still ours
        (deleting without reading first saves a round trip on every message)."""
        if self.released:
            return
        self.released = True
        await self._store.delete(self._key)


class InflightLimiter:
    """At most `limit` leases per account at once, across processes."""

    def __init__(self, store: Store, limit: int = 1, ttl: float = DEFAULT_LEASE_SECONDS) -> None:
        self.store = store
        self.limit = max(1, limit)
        self.ttl = ttl

    async def acquire(self, account: str) -> Lease | None:
        """A lease, or None when the account already has `limit` requests in flight."""
        token = secrets.token_hex(8)
        for slot in range(self.limit):
            key = f"inflight:{account}:{slot}"
            if await self.store.add(key, token, ttl=self.ttl):
                return Lease(self.store, key, token, self.ttl)
        return None
