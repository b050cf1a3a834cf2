"""A new SQLite wallet file gets 1 KiB pages; an existing file keeps its own and works as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import billing
from billing.storage.sql_engine import PAGE_SIZE


def _page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


async def test_new_file_small_pages(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    wallet = await billing.open_wallet(f"sqlite+aiosqlite:///{path}")
    try:
        await wallet.credit("a", 5_000, "fund", "t")
        hold = await wallet.hold("a", 2_000, "h", 60)
        await wallet.capture(hold.id, 1_500)
    finally:
        await wallet.close()
    assert _page_size(path) == PAGE_SIZE == 1024


async def test_existing_file_keeps_its_pages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a file made before: 4 KiB pages, WAL, a table in it
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE unrelated (x INT)")
    for _ in range(2):  # opened twice: created, then reopened
        wallet = await billing.open_wallet(f"sqlite+aiosqlite:///{path}")
        try:
            await wallet.credit("a", 1_000, f"fund-{_}", "t")
        finally:
            await wallet.close()
    assert _page_size(path) == 4096
    wallet = await billing.open_wallet(f"sqlite+aiosqlite:///{path}")
    try:
        assert (await wallet.balance("a")).total == 2_000
    finally:
        await wallet.close()
