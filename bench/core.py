"""Messages per second and added latency through the conversation core.

The upstream is an in-process fake provider that answers at once (three deltas and a usage),
so what is measured is the core's own work: dedupe, account, in-flight lease, conversation
load/trim/count/save, balance, hold, capture. Upstream time is excluded by construction; the
time spent inside the fake is measured anyway and subtracted.

    python -m bench core [--messages N] [--users U] [--concurrency C] [--backend B]

Backends: memory (the core alone: an in-memory store and wallet), sqlite (the default
synchronous=FULL: every commit reaches the disk), sqlite-normal (synchronous=NORMAL), redis,
or all.

Targets (issue 3): p99 added latency < 5 ms; >= 1,000 msg/s on SQLite, >= 3,000 on Redis,
per process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from billing.wallet.base import HELD, Balance, Entry, Hold, InsufficientCredits
from bot import runtime  # the product's event loop (uvloop where installed)
from bot.core import Core
from bot.events import FinalText, Message
from bot.providers.openai import Delta, Usage
from bot.settings import Settings


class MemoryStore:
    """The Store protocol in a dict: isolates the core's own cost from the storage's."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, float | None]] = {}
        self.sets: dict[str, set[str]] = {}

    def _live(self, key: str) -> str | None:
        item = self.data.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] < time.monotonic():
            del self.data[key]
            return None
        return item[0]

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def batch(self, ops: list[tuple]) -> list:
        return [await getattr(self, op[0])(*op[1:]) for op in ops]

    async def get_many(self, keys: list[str]) -> list[str | None]:
        return [self._live(key) for key in keys]

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self.data[key] = (value, time.monotonic() + ttl if ttl else None)

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl)
        return True

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def incr(self, key: str, ttl: float | None = None) -> int:
        value = int(self._live(key) or 0) + 1
        await self.set(key, str(value), ttl)
        return value

    async def sadd(self, name: str, member: str) -> None:
        self.sets.setdefault(name, set()).add(member)

    async def srem(self, name: str, member: str) -> None:
        self.sets.get(name, set()).discard(member)

    async def smembers(self, name: str) -> set[str]:
        return set(self.sets.get(name, set()))

    async def close(self) -> None:
        pass


class MemoryWallet:
    """Just enough of the Wallet protocol for the chat path, in memory."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.holds: dict[str, Hold] = {}
        self.by_key: dict[str, Hold] = {}
        self.entries_: list[Entry] = []

    def _entry(self, account: str, kind: str, amount: int, key: str, reason: str, **kw) -> Entry:
        entry = Entry(str(len(self.entries_) + 1), account, kind, amount, key, reason,
                      datetime.now(UTC), kw.get("ref"), kw.get("meta") or {})  # fmt: skip
        self.entries_.append(entry)
        self.totals[account] = self.totals.get(account, 0) + amount
        return entry

    async def credit(self, account: str, amount: int, key: str, reason: str, **kw) -> Entry:
        return self._entry(account, "credit", amount, key, reason, **kw)

    async def hold(self, account: str, amount: int, key: str, ttl: float) -> Hold:
        if key in self.by_key:
            return self.by_key[key]
        available = self.totals.get(account, 0) - self.held.get(account, 0)
        if available < amount:
            raise InsufficientCredits(account, amount, available)
        now = datetime.now(UTC)
        hold = Hold(str(len(self.holds) + 1), account, amount, key, HELD, now, now)
        self.holds[hold.id] = self.by_key[key] = hold
        self.held[account] = self.held.get(account, 0) + amount
        return hold

    async def capture(self, hold_id: str, amount: int, *, reason: str = "", meta=None) -> Entry:
        hold = self.holds[hold_id]
        self.held[hold.account] -= hold.amount
        self.holds[hold_id] = replace(hold, status="captured", captured=amount)
        return self._entry(hold.account, "capture", -amount, hold.key, reason, meta=meta)

    async def void(self, hold_id: str, reason: str = "") -> Hold:
        hold = self.holds[hold_id]
        self.held[hold.account] -= hold.amount
        self.holds[hold_id] = replace(hold, status="voided")
        return self.holds[hold_id]

    async def balance(self, account: str) -> Balance:
        return Balance(account, self.totals.get(account, 0), self.held.get(account, 0))

    async def sweep(self, now=None) -> int:
        return 0

    async def close(self) -> None:
        pass


class ZeroUpstream:
    """A provider that answers immediately; it records the time spent inside it."""

    def __init__(self) -> None:
        self.spent = 0.0

    async def stream_chat(
        self, model: str, messages: list[dict], max_tokens: int | None, *, stop=None
    ) -> AsyncIterator[Delta | Usage]:
        started = time.perf_counter()
        pieces = ("Hello", " there", ", friend.")
        self.spent += time.perf_counter() - started
        for piece in pieces:
            yield Delta(piece)
        yield Usage(prompt_tokens=20, completion_tokens=5)

    async def close(self) -> None:
        pass


@dataclass
class Result:
    backend: str
    messages: int
    seconds: float
    latencies: list[float]
    serial: list[float]
    cpu: float  # process CPU seconds during the loaded run (all threads, incl. the store's)

    def pct(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.backend:13} {self.messages / self.seconds:8.0f} msg/s | added latency "
            f"alone p50 {self.pct(self.serial, 0.5):.2f} ms "
            f"p99 {self.pct(self.serial, 0.99):.2f} ms | under load "
            f"p50 {self.pct(self.latencies, 0.5):.2f} ms "
            f"p99 {self.pct(self.latencies, 0.99):.2f} ms | "
            f"CPU {self.cpu / self.messages * 1000:.2f} ms/msg"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """REDIS_URL, else a throwaway redis-server on a free port, else None."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def run_backend(
    backend: str, url: str, *, messages: int, users: int, concurrency: int
) -> Result:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        wallet_url=url,
        openai_api_key="bench",
        sweep_interval_seconds=3600,
    )
    upstream = ZeroUpstream()
    if backend == "memory":
        core = await Core.create(
            settings,
            openai=upstream,
            wallet=MemoryWallet(),
            store=MemoryStore(),  # type: ignore[arg-type]
        )
    else:
        core = await Core.create(settings, openai=upstream)
    try:
        for u in range(users):
            await core.wallet.credit(f"bench:u{u}", 10**12, f"bench-fund-{u}", "bench")
        run_id = time.time_ns()

        async def one(user: int, n: int, into: list[float]) -> None:
            msg = Message("bench", f"u{user}", f"u{user}", f"{run_id}-{user}-{n}", "Hi there!")
            before = upstream.spent
            started = time.perf_counter()
            final = None
            async for event in core.handle(msg):
                if isinstance(event, FinalText):
                    final = event
            elapsed = time.perf_counter() - started - (upstream.spent - before)
            assert final is not None
            into.append(elapsed)

        serial: list[float] = []
        for n in range(min(500, messages)):  # warm up, then added latency with no contention
            await one(n % users, -1 - n, serial)

        latencies: list[float] = []
        per_user = max(1, messages // users)
        total = per_user * users

        async def worker(first: int) -> None:
            # Each worker owns every concurrency-th user: one message per user at a time,
            # like a person waiting for the reply before typing the next one.
            mine = range(first, users, concurrency)
            for n in range(per_user):
                for user in mine:
                    await one(user, n, latencies)

        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(worker(i) for i in range(min(concurrency, users))))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        return Result(backend, total, seconds, latencies, serial, cpu)
    finally:
        await core.close()


async def amain(args: argparse.Namespace) -> None:
    results: list[Result] = []
    if args.backend in ("all", "memory"):
        results.append(
            await run_backend(
                "memory",
                "sqlite+aiosqlite:///:memory:",
                messages=args.messages,
                users=args.users,
                concurrency=args.concurrency,
            )
        )
        print(results[-1].line(), flush=True)
    for name, sync in (("sqlite", "FULL"), ("sqlite-normal", "NORMAL")):
        if args.backend not in ("all", name):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}?synchronous={sync}"
            results.append(
                await run_backend(
                    name,
                    url,
                    messages=args.messages,
                    users=args.users,
                    concurrency=args.concurrency,
                )
            )
            print(results[-1].line(), flush=True)
    if args.backend in ("all", "redis"):
        with redis_server() as url:
            if url is None:
                print("redis   skipped: no REDIS_URL and no redis-server", flush=True)
            else:
                results.append(
                    await run_backend(
                        "redis",
                        url,
                        messages=args.messages,
                        users=args.users,
                        concurrency=args.concurrency,
                    )
                )
                print(results[-1].line(), flush=True)
    if results:
        print(
            f"({args.messages} messages from {args.users} users, concurrency {args.concurrency}; "
            "'alone' = one message at a time; memory = the core alone, on an in-memory store "
            "and wallet)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench core", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--backend", choices=("all", "memory", "sqlite", "sqlite-normal", "redis"), default="all"
    )
    runtime.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
