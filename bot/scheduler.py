"""The one scheduler: every periodic job of the bot, started and stopped with the core.

The jobs: the wallet sweeper (every SWEEP_INTERVAL_SECONDS: void expired holds, pick up
orphaned image tasks, move credits left on linked-away accounts), WeChat Pay reconciliation
(every minute while its front end runs: `bot.payments.wechatpay`) and the Stars retry (every
minute while the Telegram front end runs: `bot.payments.stars`). `Core.start` starts the
scheduler and `Core.close` stops it; a front end adds its job when it starts and cancels it
when it stops.

Each job runs in a task of its own, so a slow one (WeChat Pay not answering) never delays
another. A job that fails is logged and runs again at its next time; a job cancelled mid-run
(shutdown) leaves nothing half-done, because every job is idempotent and the next run resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from billing.wallet.base import Wallet

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.05  # seconds: a misconfigured 0 must not spin the loop
SWEEPER_JOB = "sweeper"

Job = Callable[[], Awaitable[object]]


@dataclass(slots=True)
class _Scheduled:
    name: str
    interval: float
    job: Job
    at_start: bool
    task: asyncio.Task[None] | None = None


class Scheduler:
    """Runs each job every `interval` seconds, from `start()` until `stop()`."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Scheduled] = {}
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def jobs(self) -> list[str]:
        """The names of the jobs added (running or waiting for `start`)."""
        return list(self._jobs)

    def every(self, name: str, seconds: float, job: Job, *, at_start: bool = False) -> None:
        """Run `job` every `seconds` (at least MIN_INTERVAL): the first time as soon as the
        scheduler runs when `at_start`, else one interval after. A job of the same name is
        replaced. Added to a running scheduler, the job starts at once."""
        old = self._jobs.pop(name, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        entry = _Scheduled(name, max(MIN_INTERVAL, seconds), job, at_start)
        self._jobs[name] = entry
        if self._running:
            self._launch(entry)

    async def cancel(self, name: str) -> None:
        """Stop and forget one job (a no-op for a name not scheduled)."""
        entry = self._jobs.pop(name, None)
        if entry is not None:
            await _halt(entry)

    def start(self) -> None:
        """Start every job added so far (and every job added from now on)."""
        if self._running:
            return
        self._running = True
        for entry in self._jobs.values():
            self._launch(entry)

    async def stop(self) -> None:
        """Cancel every running job and wait for it; the jobs stay added for a later start."""
        self._running = False
        for entry in list(self._jobs.values()):
            await _halt(entry)

    def _launch(self, entry: _Scheduled) -> None:
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._loop(entry), name=entry.name)

    async def _loop(self, entry: _Scheduled) -> None:
        if not entry.at_start:
            await asyncio.sleep(entry.interval)
        while True:
            try:
                await entry.job()
            except Exception:
                log.exception(
                    "scheduled job %s failed; it runs again in %gs", entry.name, entry.interval
                )
            await asyncio.sleep(entry.interval)


async def _halt(entry: _Scheduled) -> None:
    task, entry.task = entry.task, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Sweeper:
    """The housekeeping job: `wallet.sweep()` voids expired holds, then the extra jobs run.

    A hold outlives its purpose only when something crashed; the wallet's sweep voids it so the
    user's credit comes back. The same tick re-checks unsettled Midjourney tasks, so a task left
    by a crashed process is tracked again by a live one.
    """

    def __init__(self, wallet: Wallet, jobs: list[Job] | None = None) -> None:
        self.wallet = wallet
        self.jobs = jobs or []

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
