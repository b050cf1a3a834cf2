"""bench.sqlite_work measures real wallet transactions, not an empty loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench import sqlite_work


def test_measures_real_pairs_and_raw_updates(tmp_path: Path) -> None:
    path = tmp_path / "work.db"
    got = sqlite_work.measure(path, "NORMAL", count=20, rounds=2)
    assert got["raw"] > 0 and got["pair"] > 0
    with sqlite3.connect(path) as conn:
        captures = conn.execute(
            "SELECT count(*), sum(amount) FROM wallet_entries WHERE kind = 'capture'"
        ).fetchone()
        live = conn.execute("SELECT count(*) FROM wallet_holds WHERE status = 'held'").fetchone()
        raw = conn.execute("SELECT n FROM bench_raw WHERE id = 0").fetchone()
        total, held = conn.execute(
            "SELECT total, held FROM wallet_accounts WHERE id = 'bench'"
        ).fetchone()
    pairs = 2 + 2 * 20  # the warm-up's, then two rounds
    assert captures == (pairs, -700 * pairs)
    assert live == (0,)
    assert raw == (pairs,)
    assert (total, held) == (sqlite_work._FUND - 700 * pairs, 0)
