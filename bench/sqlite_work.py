"""SQLite's own work for a wallet hold + capture pair against a raw update, on one thread.

`bench wallet` measures through the writer thread and the event loop, so each figure there
carries a fixed cost per call (two thread wake-ups and one flush) that the wallet and the raw
writes pay alike. This one takes those away: it runs the wallet's transactions (`sql_lite`, the
same functions the writer thread runs) and the raw single-row UPDATE back to back on one sqlite3
connection, so it shows the work a pair adds over two raw writes. `2 * raw / pair` is what the
wallet bench's ratio at concurrency 1 would be if handing a call to the writer thread and back
cost nothing; the dearer that hand-off (and, on a file, the flush), the closer the wallet
bench's ratio comes to 100%, since the wallet and the raw writes pay it alike.

The two workloads take turns in rounds of `--count` iterations; the medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from billing import open_wallet
from billing.wallet import sql_lite

_FUND = 10**15
_SPAN = timedelta(seconds=60)


async def _create(path: Path) -> None:
    """A migrated wallet file with one funded account (through the product's own opener)."""
    wallet = await open_wallet(f"sqlite+aiosqlite:///{path}")
    try:
        await wallet.credit("bench", _FUND, "fund", "bench")
    finally:
        await wallet.close()


def _workloads(conn: sqlite3.Connection) -> dict[str, Callable[[int, int], None]]:
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, n INT)")
    cur.execute("INSERT OR IGNORE INTO bench_raw VALUES (0, 0)")

    def raw(rnd: int, n: int) -> None:
        for _ in range(n):
            cur.execute("UPDATE bench_raw SET n = n + 1 WHERE id = 0")

    def pair(rnd: int, n: int) -> None:
        for i in range(n):
            cur.execute("BEGIN IMMEDIATE")  # as the writer thread runs a lone call
            hold = sql_lite.hold_tx("bench", 1_000, f"{rnd}:{i}", _SPAN)(cur)
            cur.execute("COMMIT")
            cur.execute("BEGIN IMMEDIATE")
            sql_lite.capture_tx(int(hold.id), 700, "bench", {})(cur)
            cur.execute("COMMIT")

    return {"raw": raw, "pair": pair}


def measure(path: Path, synchronous: str, count: int, rounds: int) -> dict[str, float]:
    """Median µs per raw update and per hold + capture pair on `path`."""
    asyncio.run(_create(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        work = _workloads(conn)
        times: dict[str, list[float]] = {name: [] for name in work}
        for fn in work.values():  # warm-up
            fn(-1, max(1, count // 10))
        for rnd in range(rounds):
            for name, fn in work.items():
                start = time.perf_counter()
                fn(rnd, count)
                times[name].append((time.perf_counter() - start) / count * 1e6)
    finally:
        conn.close()
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench sqlite_work", description=__doc__)
    parser.add_argument("--count", type=int, default=2_000, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument(
        "--dir", default=None, help="where the file goes (default: the temp dir; /dev/shm: tmpfs)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="creditbot-bench-", dir=args.dir) as tmp:
        path = Path(tmp) / "work.db"
        got = measure(path, args.sync, args.count, args.rounds)
        where = os.path.realpath(tmp)
    print(f"sqlite work on one thread: {where} (synchronous={args.sync}), medians of {args.rounds}")
    print(f"raw update: {got['raw']:.1f} µs   hold + capture pair: {got['pair']:.1f} µs")
    limit = 2 * got["raw"] / got["pair"]
    print(f"2 * raw / pair = {limit:.0%} (the wallet bench's ratio if the hand-off cost nothing)")


if __name__ == "__main__":
    main()
