"""How many requests one user may have in flight, shared by every process through the Store.

Each request takes a lease: one of `limit` slot keys, set only if absent, with a TTL so a
crashed process cannot lock a user out for longer than the lease. Long replies renew it.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Sequence

from bot.store.base import Op, Store, batch

DEFAULT_LEASE_SECONDS = 180.0

_TAG = secrets.token_hex(4)
_serial = itertools.count(1)


def _token() -> str:
    """A lease's value: who holds the slot, for someone reading the store (it is never
    compared, so a counter does; secrets.token_hex cost a system call per message)."""
    return f"{_TAG}.{os.getpid()}.{next(_serial)}"


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

    def releasing(self) -> Op:
        """The store op that frees the slot, for a batch of the caller's (the lease counts as
        released from now on)."""
        self.released = True
        return ("delete", self._key)

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

    def claim(self, account: str) -> tuple[Op, Lease]:
        """The store op that takes the account's first slot, and the lease it gives if it
        succeeds, for a batch of the caller's (`acquire_more` tries the other slots)."""
        token = _token()
        key = f"inflight:{account}:0"
        return ("add", key, token, self.ttl), Lease(self.store, key, token, self.ttl)

    async def acquire_more(self, account: str) -> Lease | None:
        """A lease on any slot but the first (taken by someone else): None when all are taken."""
        token = _token()
        for slot in range(1, self.limit):
            key = f"inflight:{account}:{slot}"
            if await self.store.add(key, token, ttl=self.ttl):
                return Lease(self.store, key, token, self.ttl)
        return None

    async def acquire_and_read(
        self, account: str, keys: list[str], *, first: Sequence[Op] = ()
    ) -> tuple[Lease | None, list[str | None]]:
        """`acquire`, and the values of `keys` read in the same round trip (read either way).

        `first`: store writes of the caller's to make in the same round trip, before.
        """
        claim, lease = self.claim(account)
        *_, won, values = await batch(self.store, [*first, claim, ("get_many", keys)])
        if won:
            return lease, values
        return await self.acquire_more(account), values

    async def acquire(self, account: str) -> Lease | None:
        """A lease, or None when the account already has `limit` requests in flight."""
        token = _token()
        for slot in range(self.limit):
            key = f"inflight:{account}:{slot}"
            if await self.store.add(key, token, ttl=self.ttl):
                return Lease(self.store, key, token, self.ttl)
        return None
