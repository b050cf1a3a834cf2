"""Wallet throughput: hold+capture pairs per second beside the raw limit of the same store.

For each backend and concurrency, N workers (each on its own account, like N users chatting at
once) loop hold -> capture for a few seconds. In the same run and on the same store we measure
the raw limit: the cheapest atomic write that store offers, from the same kind of client:

- SQLite: bare single-row `UPDATE` commits (aiosqlite, the wallet's WAL + synchronous settings,
  on the same database file);
- PostgreSQL: bare single-row `UPDATE` transactions (asyncpg, as many connections as the
  wallet's pool);
- Redis: bare EVALSHA round trips (a one-line script) from the wallet's own client.

A pair is two wallet calls, each at least one atomic write, so the raw limit in pairs is half
the raw writes per second; the ratio compares against that. Target: >= 50%.

    python -m bench wallet [--seconds 3] [--concurrency 1,16,128] [--backends sqlite,redis,postgres]

Redis and PostgreSQL come from REDIS_URL / DATABASE_URL, or throwaway servers as in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing.wallet import open_wallet
from billing.wallet.base import Wallet

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


async def _drive(
    workers: int, seconds: float, step: Callable[[int, int], Awaitable[None]]
) -> float:
    """Run `step(worker, i)` in `workers` loops for `seconds`; return completed steps per second."""
    done = 0
    deadline = 0.0

    async def loop(w: int) -> None:
        nonlocal done
        for i in itertools.count():
            if time.perf_counter() >= deadline:
                return
            await step(w, i)
            done += 1

    # A short warm-up fills the pools and caches, then the measured run.
    deadline = time.perf_counter() + min(0.3, seconds / 5)
    await asyncio.gather(*(loop(w) for w in range(workers)))
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return done / (time.perf_counter() - start)


async def _wallet_rate(wallet: Wallet, tag: str, workers: int, seconds: float) -> float:
    accounts = [f"bench:{tag}:{workers}:{w}" for w in range(workers)]
    for account in accounts:
        await wallet.credit(account, _FUND, f"fund:{account}", "bench")
    run = os.urandom(4).hex()

    async def pair(w: int, i: int) -> None:
        hold = await wallet.hold(accounts[w], 1_000, f"{run}:{w}:{i}", 60)
        await wallet.capture(hold.id, 700, reason="bench")

    return await _drive(workers, seconds, pair)


# --- raw limits ------------------------------------------------------------------------------


async def _raw_sqlite(path: str, synchronous: str, workers: int, seconds: float) -> float:
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

        return await _drive(workers, seconds, update)
    finally:
        await db.close()


async def _raw_postgres(dsn: str, connections: int, workers: int, seconds: float) -> float:
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=min(workers, connections))
    try:
        await pool.execute("CREATE TABLE IF NOT EXISTS bench_raw (id INT PRIMARY KEY, n BIGINT)")
        await pool.executemany(
            "INSERT INTO bench_raw VALUES ($1, 0) ON CONFLICT DO NOTHING",
            [(w,) for w in range(workers)],
        )

        async def update(w: int, i: int) -> None:
            await pool.execute("UPDATE bench_raw SET n = n + 1 WHERE id = $1", w)

        return await _drive(workers, seconds, update)
    finally:
        await pool.close()


async def _raw_redis(wallet: Any, workers: int, seconds: float) -> float:
    client = wallet._redis  # the wallet's own client and pool: the same path its scripts take
    sha = await client.script_load("return redis.call('HINCRBY', KEYS[1], 'n', 1)")
    keys = [f"{{bench:raw:{w}}}" for w in range(workers)]

    async def evalsha(w: int, i: int) -> None:
        await client.execute_command("EVALSHA", sha, 1, keys[w])

    return await _drive(workers, seconds, evalsha)


# --- backends ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _servers(backends: list[str]) -> Iterator[dict[str, str | None]]:
    """URLs per backend: the environment's, or throwaway servers like the tests use."""
    from tests import services

    with contextlib.ExitStack() as stack:
        urls: dict[str, str | None] = {}
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="creditbot-bench-"))
        urls["sqlite"] = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
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
            pairs = await _wallet_rate(wallet, backend, c, seconds)
            if backend == "sqlite":
                path = url.split(":///", 1)[1]
                raw = await _raw_sqlite(path, "FULL", c, seconds)
            elif backend == "postgres":
                engine: Any = wallet.engine  # type: ignore[attr-defined]
                size = engine.pool.size() + engine.pool._max_overflow
                dsn = url.replace("postgresql+asyncpg://", "postgresql://")
                raw = await _raw_postgres(dsn, size, c, seconds)
            else:
                raw = await _raw_redis(wallet, c, seconds)
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
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with _servers(backends) as urls:  # started outside the event loop, as in the tests
        asyncio.run(run(urls, backends, concurrencies, args.seconds))


if __name__ == "__main__":
    main()
