"""The housekeeping loop inside the bot: void expired holds, pick up orphaned image tasks.

A hold outlives its purpose only when something crashed; the wallet's sweep voids it so the
user's credit comes back. The same tick re-checks unsettled Midjourney tasks, so a task left
by a crashed process is tracked again by a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from billing.wallet.base import Wallet

log = logging.getLogger(__name__)


class Sweeper:
    """Runs `wallet.sweep()` (and any extra jobs) every `interval` seconds."""

    def __init__(
        self,
        wallet: Wallet,
        interval: float,
        jobs: list[Callable[[], Awaitable[object]]] | None = None,
    ) -> None:
        self.wallet = wallet
        self.interval = max(0.05, interval)
        self.jobs = jobs or []
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> int:
        """One round; returns how many holds it voided."""
        voided = 0
        try:
            voided = await self.wallet.sweep()
            if voided:
                log.info("sweeper voided %d expired hold(s)", voided)
        except Exception:
            log.exception("wallet sweep failed")
        for job in self.jobs:
            try:
                await job()
            except Exception:
                log.exception("sweeper job failed")
        return voided

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="sweeper")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
