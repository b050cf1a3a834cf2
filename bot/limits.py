"""How many requests one user may have in flight, shared by every process through the Store.

Each request takes a lease: one of `limit` slot keys, set only if absent, with a TTL so a
crashed process cannot lock a user out for longer than the lease. Long replies renew it.
"""

from __future__ import annotations

import secrets
import time

from bot.store.base import Op, Store, batch

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

    async def release(self, *first: Op) -> None:
        """Free the slot. A lease is renewed while its request runs, so the key is still ours
        (deleting without reading first saves a round trip on every message).

        `first`: store writes to make before the slot is freed, in the same round trip (the
        request's conversation), so whoever takes the slot next sees them.
        """
        if self.released:
            if first:
                await batch(self._store, first)
            return
        self.released = True
        await batch(self._store, [*first, ("delete", self._key)])


class InflightLimiter:
    """At most `limit` leases per account at once, across processes."""

    def __init__(self, store: Store, limit: int = 1, ttl: float = DEFAULT_LEASE_SECONDS) -> None:
        self.store = store
        self.limit = max(1, limit)
        self.ttl = ttl

    async def acquire_and_read(
        self, account: str, keys: list[str]
    ) -> tuple[Lease | None, list[str | None]]:
        """`acquire`, and the values of `keys` read in the same round trip (read either way)."""
        token = secrets.token_hex(8)
        key = f"inflight:{account}:0"
        won, values = await batch(self.store, [("add", key, token, self.ttl), ("get_many", keys)])
        if won:
            return Lease(self.store, key, token, self.ttl), values
        for slot in range(1, self.limit):
            key = f"inflight:{account}:{slot}"
            if await self.store.add(key, token, ttl=self.ttl):
                return Lease(self.store, key, token, self.ttl), values
        return None, values

    async def acquire(self, account: str) -> Lease | None:
        """A lease, or None when the account already has `limit` requests in flight."""
        token = secrets.token_hex(8)
        for slot in range(self.limit):
            key = f"inflight:{account}:{slot}"
            if await self.store.add(key, token, ttl=self.ttl):
                return Lease(self.store, key, token, self.ttl)
        return None
