"""Taking a hold so that a cancelled caller never leaves it live.

A wallet's hold commits on its own once started (the SQLite writer thread, a Redis script):
if the flow that asked for it is cancelled meanwhile (the adapter stopped, the user went
away), the flow never learns the hold's id and nothing would void it until it expires. Here
the hold runs shielded, and when the caller is cancelled it is voided as soon as it lands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from billing.wallet.base import HELD, Hold, HoldNotActive, Wallet

log = logging.getLogger(__name__)

T = TypeVar("T")
_voids: set[asyncio.Task[Any]] = set()  # strong references until each settlement is done


async def hold_or_void(
    wallet: Wallet, account: str, amount: int, key: str, *, ttl: float, reason: str
) -> Hold:
    """`wallet.hold(...)`; on cancellation the hold is voided with `reason` once it exists."""
    pending = asyncio.ensure_future(wallet.hold(account, amount, key, ttl=ttl))
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        pending.add_done_callback(lambda done: _void_landed(wallet, done, reason))
        raise


def _void_landed(wallet: Wallet, done: asyncio.Future[Hold], reason: str) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    hold = done.result()
    if hold.status != HELD:
        return
    task = asyncio.get_running_loop().create_task(void_quietly(wallet, hold.id, reason))
    _voids.add(task)
    task.add_done_callback(_voids.discard)


async def void_quietly(wallet: Wallet, hold_id: str, reason: str) -> None:
    """Void a hold that must not stay live; a hold already settled is left as it is."""
    try:
        await wallet.void(hold_id, reason=reason)
    except HoldNotActive:
        pass
    except Exception:
        log.exception("could not void hold %s; the sweeper will when it expires", hold_id)


async def void_shielded(wallet: Wallet, hold_id: str, reason: str) -> None:
    """Void from a flow that may be being cancelled: the void itself always runs to the end."""
    await run_shielded(void_quietly(wallet, hold_id, reason))


async def run_shielded(work: Coroutine[Any, Any, T]) -> T:
    """Await `work` so that cancelling the caller cannot stop it half-way (money settles)."""
    task = asyncio.ensure_future(work)
    _voids.add(task)
    task.add_done_callback(_voids.discard)
    return await asyncio.shield(task)
