"""Redis-only wallet behaviour: one slot per account, the operator's ledger export, ids.

The money rules themselves are in the contract suite, run against every backend.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from billing.wallet.base import HoldNotActive, HoldNotFound, InsufficientCredits, InvalidAmount
from billing.wallet.redis_wallet import ACCOUNTS_KEY, RedisWallet, account_tag

pytestmark = pytest.mark.redis

_LUA_LINE = re.compile(r'^\+[\d.]+ \[(\d+) lua\] "(\w+)"(?: "((?:[^"\\]|\\.)*)")?')


@pytest.fixture
async def wallet(redis_url: str) -> AsyncIterator[RedisWallet]:
    w = await RedisWallet.open(redis_url)
    yield w
    await w.close()


async def _workload(w: RedisWallet, account: str) -> None:
    """Every script at least once, with its refusals."""
    await w.credit(account, 10_000, f"{account}-top", "top-up")
    await w.debit(account, 1_000, f"{account}-rev", "reversal")
    spent = await w.hold(account, 3_000, f"{account}-h1", 60)
    await w.capture(spent.id, 1_234, reason="chat", meta={"model": "gpt-4"})
    await w.capture(spent.id, 1_234)  # replay
    released = await w.hold(account, 500, f"{account}-h2", 60)
    await w.void(released.id)
    late = await w.hold(account, 500, f"{account}-h3", 0.001)
    await asyncio.sleep(0.01)
    with pytest.raises(HoldNotActive):
        await w.capture(late.id, 1)
    await w.hold(account, 100, f"{account}-h4", 0.001)
    await asyncio.sleep(0.01)
    await w.sweep()


async def test_every_key_a_script_touches_is_in_the_accounts_slot(
    wallet: RedisWallet, redis_url: str
) -> None:
    """Watch the server (MONITOR) while the scripts run: each key they touch is one slot."""
    url = urlparse(redis_url)
    db = url.path.strip("/") or "0"
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"MONITOR\r\n")
    assert (await reader.readline()).startswith(b"+OK")
    accounts = ["tg:1001", "wx:oAbC-9_x"]
    for account in accounts:
        await _workload(wallet, account)
    await wallet.balance(accounts[0])  # a marker: its HMGET runs outside any script
    touched: list[tuple[str, str]] = []
    while True:
        line = (await asyncio.wait_for(reader.readline(), 5)).decode()
        if '"HMGET" "{acct:tg:1001}"' in line and " lua]" not in line:
            break
        m = _LUA_LINE.match(line)
        if m and m.group(1) == db and m.group(2).upper() != "TIME":
            touched.append((m.group(2), m.group(3)))
    writer.close()
    assert len(touched) > 40
    slots = {key_slot(account_tag(a).encode()) for a in accounts}
    assert len(slots) == 2
    for command, key in touched:
        owner = next(a for a in accounts if key.startswith(account_tag(a)))
        assert key_slot(key.encode()) == key_slot(account_tag(owner).encode()), (command, key)


async def test_keys_outside_accounts_are_only_the_account_index(
    wallet: RedisWallet, redis_url: str
) -> None:
    await _workload(wallet, "tg:7")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = [k async for k in client.scan_iter()]
    await client.aclose()
    assert ACCOUNTS_KEY in keys
    tagged = [k for k in keys if k != ACCOUNTS_KEY]
    assert tagged and all(k.startswith("{acct:tg:7}") for k in tagged)


async def test_operator_exports_the_ledger_as_json(wallet: RedisWallet, redis_url: str) -> None:
    """The export is the whole ledger oldest first, it sums to the balance, and the raw
    stream is plain JSON an operator can read with redis-cli."""
    await _workload(wallet, "tg:42")
    exported = await wallet.export_ledger("tg:42")
    assert [e.kind for e in exported] == ["credit", "debit", "capture"]
    assert sum(e.amount for e in exported) == (await wallet.balance("tg:42")).total == 7_766
    assert exported == list(reversed(await wallet.entries("tg:42")))
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    raw = await client.xrange("{acct:tg:42}:ledger", "-", "+")
    await client.aclose()
    rows = [json.loads(fields["entry"]) for _, fields in raw]
    assert rows[2]["meta"] == {"model": "gpt-4"}
    assert rows[2]["amount"] == -1_234 and rows[2]["ref"] == exported[2].ref
    assert [r["id"] for r in rows] == [e.id for e in exported]


async def test_entry_ids_are_short_and_typed_back(wallet: RedisWallet) -> None:
    """Users type an entry id after /refund: it must lead back to the entry, or to nothing."""
    entry = await wallet.credit("tg:5", 1_000, "k", "top-up")
    assert entry.id == "tg:5~1"
    assert await wallet.get_entry("tg:5~1") == entry
    assert await wallet.get_entry(" tg:5~1 ") == entry
    for wrong in ("tg:5~2", "tg:5", "~1", "tg:5~x", "tg:6~1", "tg:5~h1", "tg:5~²", "tg:5~", ""):
        assert await wallet.get_entry(wrong) is None
    hold = await wallet.hold("tg:5", 10, "h", 60)
    assert hold.id == "tg:5~h1"
    for wrong in ("tg:5~1", "tg:5~h9", "nonsense"):
        with pytest.raises(HoldNotFound):
            await wallet.get_hold(wrong)


async def test_scripts_come_back_after_the_server_forgets_them(
    wallet: RedisWallet, redis_url: str
) -> None:
    """After a Redis restart or SCRIPT FLUSH the wallet loads its scripts again by itself."""
    await wallet.credit("tg:9", 500, "a", "top-up")
    client = aioredis.Redis.from_url(redis_url)
    await client.script_flush()
    await client.aclose()
    hold = await wallet.hold("tg:9", 400, "h", 60)
    with pytest.raises(InsufficientCredits):
        await wallet.hold("tg:9", 101, "h2", 60)
    await wallet.capture(hold.id, 400)
    assert (await wallet.balance("tg:9")).available == 100


async def test_entries_before_a_time_page_back(wallet: RedisWallet) -> None:
    made = [await wallet.credit("tg:3", 1, f"k{i}", "grant") for i in range(12)]
    older = await wallet.entries("tg:3", limit=5, before=made[8].created_at)
    assert [e.id for e in older] == [e.id for e in reversed(made[3:8])]


async def test_what_a_call_returns_is_what_the_ledger_keeps(wallet: RedisWallet) -> None:
    """The first call builds its answer without reading back; a replay reads the ledger."""
    meta = {"model": "gpt-4", "prompt_tokens": 12, "completion_tokens": 30, "rule": "full"}
    credit = await wallet.credit("tg:8", 5_000, "pay-1", "Stars top-up", ref="x", meta=meta)
    assert credit == await wallet.credit("tg:8", 5_000, "pay-1", "Stars top-up")
    hold = await wallet.hold("tg:8", 2_000, "chat-1", 60)
    spent = await wallet.capture(hold.id, 1_500, reason="gpt-4 reply", meta=meta)
    assert spent == await wallet.capture(hold.id, 1_500) == await wallet.get_entry(spent.id)
    assert spent.key == "capture:chat-1" and spent.ref == hold.id and spent.amount == -1_500
    assert (await wallet.get_hold(hold.id)).entry_id == spent.id
    assert await wallet.export_ledger("tg:8") == [credit, spent]


async def test_amounts_beyond_exact_script_arithmetic_are_refused(wallet: RedisWallet) -> None:
    with pytest.raises(InvalidAmount):
        await wallet.credit("tg:11", 2**53 + 1, "huge", "typo")
    assert (await wallet.balance("tg:11")).total == 0
