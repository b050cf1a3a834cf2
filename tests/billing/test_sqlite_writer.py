"""SQLite's writer thread: group commit, one failure rolling back alone, callers that give up,
and a clean close. The wallet and the bot's store both run on it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from billing.storage.sqlite_writer import SqliteWriter


@pytest.fixture
async def writer(tmp_path: Path):
    w = SqliteWriter(str(tmp_path / "w.db"), "FULL", name="test-writer")
    await w.run(lambda cur: cur.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)"))
    yield w
    await w.close()


def _insert(k: str, v: int):
    def fn(cur: sqlite3.Cursor) -> int:
        cur.execute("INSERT INTO t VALUES (?, ?)", (k, v))
        return v

    return fn


def _rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT k, v FROM t").fetchall())


async def test_concurrent_writes_commit_together_and_fail_alone(
    writer: SqliteWriter, tmp_path: Path
) -> None:
    threads: set[str] = set()
    gate = threading.Event()

    def slow(cur: sqlite3.Cursor) -> None:  # holds the thread so the rest queue up
        threads.add(threading.current_thread().name)
        gate.wait(5)

    first = asyncio.ensure_future(writer.run(slow))
    await asyncio.sleep(0.05)
    calls = [writer.run(_insert(f"k{i}", i)) for i in range(50)]
    calls.append(writer.run(_insert("k7", 99)))  # duplicate key: fails, alone
    pending = asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0.05)
    gate.set()
    await first
    results = await pending
    assert results[:50] == list(range(50))
    assert isinstance(results[50], sqlite3.IntegrityError)
    assert _rows(tmp_path / "w.db") == {f"k{i}": i for i in range(50)}
    assert threads == {"test-writer"}


async def test_a_caller_that_gives_up_does_not_stop_the_others(
    writer: SqliteWriter, tmp_path: Path
) -> None:
    gate = threading.Event()
    blocker = asyncio.ensure_future(writer.run(lambda cur: gate.wait(5)))
    await asyncio.sleep(0.02)
    quitter = asyncio.ensure_future(writer.run(_insert("quit", 1)))
    stayer = asyncio.ensure_future(writer.run(_insert("stay", 2)))
    await asyncio.sleep(0.02)
    quitter.cancel()
    gate.set()
    await blocker
    assert await stayer == 2
    with pytest.raises(asyncio.CancelledError):
        await quitter
    # The write of the caller that gave up stands or not with its batch; it is never half-done.
    assert _rows(tmp_path / "w.db")["stay"] == 2
    assert await writer.run(_insert("after", 3)) == 3


async def test_close_finishes_queued_work_then_refuses(tmp_path: Path) -> None:
    w = SqliteWriter(str(tmp_path / "c.db"), "FULL", name="closing-writer")
    await w.run(lambda cur: cur.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)"))
    queued = [asyncio.ensure_future(w.run(_insert(f"q{i}", i))) for i in range(20)]
    await asyncio.sleep(0)
    await w.close()
    assert [await q for q in queued] == list(range(20))
    assert len(_rows(tmp_path / "c.db")) == 20
    assert not any(t.name == "closing-writer" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        await w.run(_insert("late", 1))


def test_answers_reach_each_callers_own_loop(tmp_path: Path) -> None:
    """Callers on two event loops (two threads) each get their own answers."""
    w = SqliteWriter(str(tmp_path / "l.db"), "NORMAL", name="loops-writer")
    asyncio.run(w.run(lambda cur: cur.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)")))
    out: dict[str, list[int]] = {}

    def on_loop(tag: str) -> None:
        async def main() -> list[int]:
            return list(await asyncio.gather(*(w.run(_insert(f"{tag}{i}", i)) for i in range(100))))

        out[tag] = asyncio.run(main())

    threads = [threading.Thread(target=on_loop, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == {"a": list(range(100)), "b": list(range(100))}
    asyncio.run(w.close())
    assert len(_rows(tmp_path / "l.db")) == 200


async def test_one_writer_per_file_shared_until_the_last_user_closes(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    a = SqliteWriter.shared(path, "FULL", name="shared-writer")
    b = SqliteWriter.shared(str(tmp_path / "." / "s.db"), "FULL")  # the same file
    other = SqliteWriter.shared(str(tmp_path / "o.db"), "FULL")
    assert a is b and other is not a
    await a.run(lambda cur: cur.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)"))
    await a.close()  # b still uses it
    assert await b.run(_insert("x", 1)) == 1
    await b.close()  # the last user: really closed
    with pytest.raises(RuntimeError, match="closed"):
        await b.run(_insert("y", 2))
    c = SqliteWriter.shared(path, "FULL")  # a new one for a new user
    assert c is not a
    assert await c.run(lambda cur: cur.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    await c.close()
    await other.close()


async def test_closing_the_wallet_twice_leaves_the_store_its_writer(tmp_path: Path) -> None:
    import billing
    from bot.store import open_store

    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    wallet = await billing.open_wallet(url)
    store = await open_store(url)
    try:
        await wallet.credit("a", 1_000, "fund", "t")
        await wallet.close()
        await wallet.close()  # a second close is a no-op, not the store's writer closing
        assert await store.add("k", "v", 60)
        assert await store.get("k") == "v"
    finally:
        await store.close()
