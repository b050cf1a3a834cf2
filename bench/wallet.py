"""Wallet throughput: hold+capture pairs per second beside the raw limit of the same store.

For each backend and concurrency, N workers (each on its own account, like N users chatting at
once) loop hold -> capture for a few seconds. The wallet and the raw workload take turns in
half-second slices, so a busy machine slows both alike. The raw limit is the cheapest atomic
write the same store offers, from the same kind of client:

- SQLite: bare single-row `UPDATE` commits (aiosqlite, the wallet's WAL + synchronous settings,
  on the same database file);
- PostgreSQL: bare single-row `UPDATE` transactions (asyncpg, as many connections as the
  wallet's pool);
- Redis: bare EVALSHA round trips (a one-line script) from the wallet's own client.

A pair is two wallet calls, each at least one atomic write, so the raw limit in pairs is half
the raw writes per second; the ratio compares against that. Target: >= 50%.

    python -m bench wallet [--seconds 3] [--concurrency 1,16,128] [--backends sqlite,postgres,redis]
                           [--sqlite-sync FULL|NORMAL]

Redis and PostgreSQL come from REDIS_URL / DATABASE_URL, or throwaway servers as in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing.wallet import open_wallet
from billing.wallet.base import Wallet
from bot import runtime  # the product's event loop (uvloop where installed)

_FUND = 10**15  # millicredits per bench account: never runs dry


@dataclass
class Cell:
    backend: str
    concurrency: int
    pairs_per_s: float
    raw_per_s: float

    @property
    def ratio(self) -> float:
        return self.pairs_per_s / (self.raw_per_s / 2) if self.raw_per_s else 0.0


Step = Callable[[int, int], Awaitable[None]]
_SLICE = 0.5  # seconds; wallet and raw take turns so both see the same machine load
_WARMUP = 1.0  # seconds per workload before measuring (see _measure)


class _Meter:
    """Counts steps of one workload over several slices of time."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.done = 0
        self.elapsed = 0.0
        self.calls = 0

    async def run(self, workers: int, seconds: float, *, count: bool = True) -> None:
        deadline = time.perf_counter() + seconds
        done = 0

        async def loop(w: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await self.step(w, self.calls)
                self.calls += 1
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop(w) for w in range(workers)))
        if count:
            self.done += done
            self.elapsed += time.perf_counter() - start

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0


async def _measure(workers: int, seconds: float, wallet: Step, raw: Step) -> tuple[float, float]:
    """Alternate short slices of the wallet and the raw workload; return both rates per second."""
    meters = _Meter(wallet), _Meter(raw)
    # Warm-up: fill the pools and caches, and let a fresh SQLite file's WAL grow to its working
    # size (while it grows, each commit also extends the file; the wallet writes several pages
    # per commit, so it would pay that start-up cost several times over in the first second).
    for meter in meters:
        await meter.run(workers, min(_WARMUP, seconds / 3), count=False)
    slices = max(1, round(seconds / _SLICE))
    for _ in range(slices):
        for meter in meters:
            await meter.run(workers, seconds / slices)
    return meters[0].rate, meters[1].rate


async def _wallet_step(wallet: Wallet, tag: str, workers: int) -> Step:
    accounts = [f"bench:{tag}:{workers}:{w}" for w in range(workers)]
    for account in accounts:
        await wallet.credit(account, _FUND, f"fund:{account}", "bench")
    run = os.urandom(4).hex()

    async def pair(w: int, i: int) -> None:
        hold = await wallet.hold(accounts[w], 1_000, f"{run}:{w}:{i}", 60)
        await wallet.capture(hold.id, 700, reason="bench")

    return pair


# --- raw limits ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _raw_sqlite(path: str, synchronous: str, workers: int) -> AsyncIterator[Step]:
    import aiosqlite

    db = await aiosqlite.connect(path, isolation_level=None)  # autocommit: one UPDATE, one commit
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute("CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, n INT)")
        await db.executemany(
            "INSERT OR IGNORE INTO bench_raw VALUES (?, 0)", [(w,) for w in range(workers)]
        )

        async def update(w: int, i: int) -> None:
            await db.execute("UPDATE bench_raw SET n = n + 1 WHERE id = ?", (w,))

        yield update
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def _raw_postgres(dsn: str, connections: int, workers: int) -> AsyncIterator[Step]:
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=min(workers, connections))
    try:
        await pool.execute("CREATE TABLE IF NOT EXISTS bench_raw (id INT PRIMARY KEY, n BIGINT)")
        await pool.executemany(
            "INSERT INTO bench_raw VALUES ($1, 0) ON CONFLICT DO NOTHING",
            [(w,) for w in range(workers)],
        )

        # Check the connections out once: a pool's per-call acquire/release would add its reset
        # query to every raw write and flatter the wallet's ratio.
        idle: asyncio.Queue[Any] = asyncio.Queue()
        held = [await pool.acquire() for _ in range(min(workers, connections))]
        for conn in held:
            idle.put_nowait(conn)

        async def update(w: int, i: int) -> None:
            conn = await idle.get()
            try:
                await conn.execute("UPDATE bench_raw SET n = n + 1 WHERE id = $1", w)
            finally:
                idle.put_nowait(conn)

        try:
            yield update
        finally:
            for conn in held:
                await pool.release(conn)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _raw_redis(wallet: Any, workers: int) -> AsyncIterator[Step]:
    client = wallet._redis  # the wallet's own client and pool: the same path its scripts take
    sha = await client.script_load("return redis.call('HINCRBY', KEYS[1], 'n', 1)")
    keys = [f"{{bench:raw:{w}}}" for w in range(workers)]

    async def evalsha(w: int, i: int) -> None:
        await client.execute_command("EVALSHA", sha, 1, keys[w])

    yield evalsha


# --- backends ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _servers(backends: list[str], sqlite_sync: str) -> Iterator[dict[str, str | None]]:
    """URLs per backend: the environment's, or throwaway servers like the tests use."""
    from fakes import services

    with contextlib.ExitStack() as stack:
        urls: dict[str, str | None] = {}
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="creditbot-bench-"))
        urls["sqlite"] = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}?synchronous={sqlite_sync}"
        if "redis" in backends:
            urls["redis"] = stack.enter_context(services.redis_server())
        if "postgres" in backends:
            admin = stack.enter_context(services.postgres_server())
            if admin:
                url = services.create_database(admin)
                stack.callback(services.drop_database, admin, url)
                urls["postgres"] = url
            else:
                urls["postgres"] = None
        yield urls


async def _bench_backend(
    backend: str, url: str, concurrencies: list[int], seconds: float
) -> list[Cell]:
    wallet = await open_wallet(url)
    cells = []
    try:
        for c in concurrencies:
            raw_step: contextlib.AbstractAsyncContextManager[Step]
            if backend == "sqlite":
                path, _, query = url.split(":///", 1)[1].partition("?synchronous=")
                raw_step = _raw_sqlite(path, query or "FULL", c)
            elif backend == "postgres":
                engine: Any = wallet.engine  # type: ignore[attr-defined]
                size = engine.pool.size() + engine.pool._max_overflow  # the wallet's pool
                dsn = url.replace("postgresql+asyncpg://", "postgresql://")
                raw_step = _raw_postgres(dsn, size, c)
            else:
                raw_step = _raw_redis(wallet, c)
            async with raw_step as raw_fn:
                pairs, raw = await _measure(
                    c, seconds, await _wallet_step(wallet, backend, c), raw_fn
                )
            cell = Cell(backend, c, pairs, raw)
            cells.append(cell)
            print(_row(cell), flush=True)
    finally:
        await wallet.close()
    return cells


_HEADER = (
    f"| {'backend':<8} | {'conc.':>5} | {'pairs/s':>9} | {'raw writes/s':>12} "
    f"| {'raw pairs/s':>11} | {'ratio':>6} |"
)


def _row(c: Cell) -> str:
    return (
        f"| {c.backend:<8} | {c.concurrency:>5} | {c.pairs_per_s:>9,.0f} | {c.raw_per_s:>12,.0f} "
        f"| {c.raw_per_s / 2:>11,.0f} | {c.ratio:>6.0%} |"
    )


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {sys.platform}"


async def run(
    urls: dict[str, str | None], backends: list[str], concurrencies: list[int], seconds: float
) -> list[Cell]:
    print(f"wallet bench: {seconds:g} s per cell on {_machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(_HEADER)
    print("|" + "|".join("-" * (len(h)) for h in _HEADER.split("|")[1:-1]) + "|")
    cells: list[Cell] = []
    for backend in backends:
        url = urls.get(backend)
        if not url:
            print(f"| {backend:<8} | (no server available, skipped)", flush=True)
            continue
        cells += await _bench_backend(backend, url, concurrencies, seconds)
    short = [c for c in cells if c.ratio < 0.5]
    for c in short:
        print(f"below target: {c.backend} at {c.concurrency} ({c.ratio:.0%} of raw)")
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench wallet", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per cell")
    parser.add_argument("--concurrency", default="1,16,128", help="comma-separated")
    parser.add_argument("--backends", default="sqlite,postgres,redis", help="comma-separated")
    parser.add_argument(
        "--sqlite-sync",
        default="FULL",
        choices=["FULL", "NORMAL"],
        help="SQLite synchronous setting for the wallet and its raw limit alike (default FULL)",
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    # Servers start outside the event loop, as in the tests.
    with _servers(backends, args.sqlite_sync) as urls:
        runtime.run(run(urls, backends, concurrencies, args.seconds))


if __name__ == "__main__":
    main()
