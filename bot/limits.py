"""How many requests one user may have in flight, shared by every process through the Store.

Each request takes a lease: one of `limit` slot keys, set only if absent, with a TTL so a
crashed process cannot lock a user out for longer than the lease. Long replies renew it.

A round trip that takes (or frees) a slot can fail or be cancelled after the store applied it:
the request then does not know whether the slot is its own. It frees it by its token
(`Store.delete_if`), never blindly: if its `add` lost, the slot is another request's and must
stay taken, or two requests would run at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

from bot.store.base import Op, Store, batch
from bot.store.keys import inflight_key

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 180.0
# How long a failed or cancelled request waits for its uncertain slots to be freed; past that
# the freeing goes on in the background (a cancellation is not held up for long).
FREE_WAIT_SECONDS = 2.0

_TAG = secrets.token_hex(4)
_serial = itertools.count(1)
_freeing: set[asyncio.Task[None]] = set()  # strong references until each freeing is done


def new_token() -> str:
    """A value unique to this request in any process, for `delete_if` (see `_token`)."""
    return _token()


def _token() -> str:
    """A lease's value: which request holds the slot. Unique per request (a random tag per
    process start, the pid, a counter; secrets.token_hex cost a system call per message), so
    `delete_if` with it frees this request's slot and never another's."""
    return f"{_TAG}.{os.getpid()}.{next(_serial)}"


async def free_uncertain(store: Store, leases: Sequence[Lease]) -> None:
    """Free `leases` after a round trip that took or freed them failed or was cancelled: each
    slot is deleted only if it still holds its lease's token, in one round trip.

    Shielded, so a second cancellation cannot stop it half-way, and awaited at most
    FREE_WAIT_SECONDS. A failure is logged; the slot then frees itself when its TTL runs out.
    On SQLite (one writer queue) and Redis (one pipeline, in order) the freeing runs after the
    op it follows up, even one cancelled while still queued; on PostgreSQL a statement still
    committing on another connection could land after it (that slot then expires as before).
    """
    await undo_uncertain(store, [lease.freeing() for lease in leases])


async def undo_uncertain(store: Store, ops: Sequence[Op]) -> None:
    """Run `ops` (each a `delete_if` of what a failed round trip may have written) as
    `free_uncertain` does: shielded, awaited at most FREE_WAIT_SECONDS, failures logged."""
    task = asyncio.ensure_future(_free(store, list(ops)))
    _freeing.add(task)
    task.add_done_callback(_freeing.discard)
    try:
        await asyncio.wait_for(asyncio.shield(task), FREE_WAIT_SECONDS)
    except TimeoutError:
        log.warning("freeing %s is slow; it goes on in the background", _keys(ops))


async def _free(store: Store, ops: list[Op]) -> None:
    try:
        await batch(store, ops)
    except Exception:
        log.warning("could not free %s; it expires with its TTL", _keys(ops), exc_info=True)


def _keys(ops: Sequence[Op]) -> str:
    return ", ".join(str(op[1]) for op in ops)


async def batch_taking(store: Store, ops: Sequence[Op], *leases: Lease) -> list[Any]:
    """`batch(store, ops)` where `ops` take or free `leases`. If it raises (an error, or the
    caller cancelled while it was in flight), the store may have applied it all, part or none:
    each lease is freed by its token (`free_uncertain`) before the error goes on."""
    try:
        return await batch(store, ops)
    except BaseException:
        await free_uncertain(store, leases)
        raise


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

    def freeing(self) -> Op:
        """The store op that frees the slot only while it holds this lease's token: for when
        it is unknown whether the slot is ours (see `free_uncertain`)."""
        self.released = True
        return ("delete_if", self._key, self._token)

    async def release(self, *first: Op) -> None:
        """Free the slot. A lease is renewed while its request runs, so the key is still ours
        (deleting without reading first saves a round trip on every message). If the round
        trip fails or is cancelled, the slot is freed by its token instead.

        `first`: store writes to make before the slot is freed, in the same round trip (the
        request's conversation), so whoever takes the slot next sees them.
        """
        if self.released:
            if first:
                await batch(self._store, first)
            return
        self.released = True
        await batch_taking(self._store, [*first, ("delete", self._key)], self)


class InflightLimiter:
    """At most `limit` leases per account at once, across processes."""

    def __init__(self, store: Store, limit: int = 1, ttl: float = DEFAULT_LEASE_SECONDS) -> None:
        self.store = store
        self.limit = max(1, limit)
        self.ttl = ttl

    def claim(self, account: str) -> tuple[Op, Lease]:
        """The store op that takes the account's first slot, and the lease it gives if it
        succeeds, for a batch of the caller's (`acquire_more` tries the other slots). The
        caller sends it with `batch_taking`, so a failed round trip cannot keep the slot."""
        token = _token()
        key = inflight_key(account, 0)
        return ("add", key, token, self.ttl), Lease(self.store, key, token, self.ttl)

    async def acquire_more(self, account: str) -> Lease | None:
        """A lease on any slot but the first (taken by someone else): None when all are taken."""
        return await self._acquire(account, range(1, self.limit))

    async def acquire_and_read(
        self, account: str, keys: list[str], *, giving_back: Lease | None = None
    ) -> tuple[Lease | None, list[str | None]]:
        """`acquire`, and the values of `keys` read in the same round trip (read either way).

        `giving_back`: a lease of the caller's to free in the same round trip, before.
        """
        claim, lease = self.claim(account)
        ops = [claim, ("get_many", keys)]
        leases = [lease]
        if giving_back is not None:
            ops.insert(0, giving_back.releasing())
            leases.append(giving_back)
        *_, won, values = await batch_taking(self.store, ops, *leases)
        if won:
            return lease, values
        return await self.acquire_more(account), values

    async def acquire(self, account: str) -> Lease | None:
        """A lease, or None when the account already has `limit` requests in flight."""
        return await self._acquire(account, range(self.limit))

    async def _acquire(self, account: str, slots: range) -> Lease | None:
        token = _token()
        for slot in slots:
            key = inflight_key(account, slot)
            lease = Lease(self.store, key, token, self.ttl)
            try:
                won = await self.store.add(key, token, ttl=self.ttl)
            except BaseException:
                await free_uncertain(self.store, [lease])
                raise
            if won:
                return lease
        return None
