"""What `/healthz` reports: each part of the running bot, up or down, and in a word why.

Two kinds of check. A `Status` is a part's own word, set where the outcome happens: the
Telegram front end marks itself down while it cannot reach the Bot API and up once it can, the
upstream client records how its last request went. Reading one costs nothing. A probe is a
small call made when asked (the wallet's and the store's one read); `Health.report` runs them
all at once, each within a time limit, and serves the same answer to every caller for a second
so a flood of probes is not a flood of database reads.

Nothing here carries business figures: no balances, no revenue, no user ids. `/healthz` is
unauthenticated, so the details are words like "unreachable" or an exception's class name;
the full error goes to the log, once when the part goes down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0  # a probe slower than this counts as down
REPORT_TTL = 1.0  # seconds one report is served to every caller
RECHECK_SECONDS = 60.0  # while a part is down, how often it may be asked again


@dataclass(frozen=True, slots=True)
class Check:
    """One part's state as reported: ok or not, and a short, secret-free reason."""

    ok: bool
    detail: str = ""

    def as_json(self) -> dict[str, str]:
        body = {"status": "ok" if self.ok else "down"}
        if self.detail:
            body["detail"] = self.detail
        return body


class Status:
    """A part's own health, set by the code that sees the outcome (no probe traffic).

    A part that is down may stay down for want of traffic (no user tries the upstream after
    it failed them): `recheck`, when given, is a cheap call that sets the status itself, and
    `refresh()` (called by each health probe) starts it in the background while the part is
    down, at most once per `every` seconds. While up, nothing is ever called.
    """

    def __init__(
        self,
        name: str,
        *,
        ok: bool,
        detail: str = "",
        recheck: Callable[[], Awaitable[Any]] | None = None,
        every: float = RECHECK_SECONDS,
    ) -> None:
        self.name = name
        self.ok = ok
        self.detail = detail
        self.since = time.monotonic()  # when `ok` last changed
        self.recheck = recheck
        self.every = every
        self._rechecked_at = float("-inf")
        self._task: asyncio.Task[Any] | None = None

    def refresh(self) -> None:
        """While down, start `recheck` in the background (once per `every` seconds)."""
        if self.ok or self.recheck is None or (self._task is not None and not self._task.done()):
            return
        now = time.monotonic()
        if now - self._rechecked_at < self.every:
            return
        self._rechecked_at = now
        self._task = asyncio.create_task(self._run_recheck(), name=f"{self.name}-recheck")

    async def _run_recheck(self) -> None:
        assert self.recheck is not None
        try:
            await self.recheck()
        except Exception as exc:  # the recheck should set the status; if it raised, down
            self.down(type(exc).__name__)

    def cancel(self) -> None:
        """Stop a recheck in flight (the part is closing)."""
        if self._task is not None:
            self._task.cancel()

    def up(self, detail: str = "") -> None:
        if not self.ok:
            log.info("%s is up again%s", self.name, f": {detail}" if detail else "")
            self.since = time.monotonic()
        self.ok, self.detail = True, detail

    def down(self, detail: str) -> None:
        if self.ok:
            self.since = time.monotonic()
        self.ok, self.detail = False, detail

    @property
    def age(self) -> float:
        """Seconds since the state last changed."""
        return time.monotonic() - self.since

    def check(self) -> Check:
        return Check(self.ok, self.detail)


Probe = Callable[[], Awaitable[Check]]


def status_probe(status: Status) -> Probe:
    """A probe reading `status` (and starting its recheck when due)."""

    async def probe() -> Check:
        status.refresh()
        return status.check()

    return probe


def read_probe(read: Callable[[], Awaitable[Any]]) -> Probe:
    """A probe that is up when `read()` returns (the wallet's or store's one cheap read)."""

    async def probe() -> Check:
        await read()
        return Check(True)

    return probe


class Health:
    """Named probes, run together; `report()` is what /healthz answers."""

    def __init__(self, *, timeout: float = PROBE_TIMEOUT, ttl: float = REPORT_TTL) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self._probes: dict[str, Probe] = {}
        self._last: tuple[float, bool, dict[str, dict[str, str]]] | None = None
        self._running: asyncio.Task[tuple[bool, dict[str, dict[str, str]]]] | None = None
        self._was_down: set[str] = set()

    def add(self, name: str, probe: Probe | Status) -> None:
        self._probes[name] = status_probe(probe) if isinstance(probe, Status) else probe

    @property
    def names(self) -> list[str]:
        return list(self._probes)

    async def report(self) -> tuple[bool, dict[str, dict[str, str]]]:
        """(all ok, {name: {"status": "ok"|"down", "detail": ...}}), at most `ttl` old."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.ttl:
            return self._last[1], self._last[2]
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run(), name="healthz")
        # shield: a caller that gives up does not cancel the report the others wait for
        return await asyncio.shield(self._running)

    async def _run(self) -> tuple[bool, dict[str, dict[str, str]]]:
        names = list(self._probes)
        results = await asyncio.gather(*(self._one(n) for n in names))
        checks = {name: check.as_json() for name, check in zip(names, results, strict=True)}
        healthy = all(check.ok for check in results)
        self._last = (time.monotonic(), healthy, checks)
        return healthy, checks

    async def _one(self, name: str) -> Check:
        try:
            check = await asyncio.wait_for(self._probes[name](), self.timeout)
        except TimeoutError:
            check, error = Check(False, f"no answer within {self.timeout:g} s"), None
        except Exception as exc:
            check, error = Check(False, type(exc).__name__), exc
        else:
            error = None
        if check.ok:
            self._was_down.discard(name)
        elif name not in self._was_down:  # log a part going down once, not at every probe
            self._was_down.add(name)
            log.warning("health: %s is down (%s)", name, check.detail, exc_info=error)
        return check
