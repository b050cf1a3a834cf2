"""The bot's key-value store, the same tests on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

import billing
from bot.store import open_store
from bot.store.base import Store

# Long enough that a busy machine does not expire a key between two calls, short enough to wait.
TTL = 0.6


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    yield s
    await s.close()


async def test_values_are_kept_until_deleted_and_survive_a_reopen(
    store: Store, store_url: str
) -> None:
    assert await store.get("conv:tg:1") is None
    await store.set("conv:tg:1", '{"model": "gpt-4"}')
    await store.set("lang:tg:1", "zh")
    await store.set("lang:tg:1", "en")
    again = await open_store(store_url)
    try:
        assert await again.get("conv:tg:1") == '{"model": "gpt-4"}'
        assert await again.get("lang:tg:1") == "en"
    finally:
        await again.close()
    assert await store.delete("conv:tg:1") is True
    assert await store.delete("conv:tg:1") is False
    assert await store.get("conv:tg:1") is None


async def test_expired_values_read_as_absent(store: Store) -> None:
    await store.set("pending:wx:1", "reply", ttl=TTL)
    assert await store.get("pending:wx:1") == "reply"
    await asyncio.sleep(TTL + 0.2)
    assert await store.get("pending:wx:1") is None
    assert await store.delete("pending:wx:1") is False


async def test_add_sets_only_once_until_the_key_expires(store: Store) -> None:
    """Dedupe of redelivered messages: the first delivery wins, the retry is dropped."""
    assert await store.add("seen:wx:msg1", "1", ttl=TTL) is True
    assert await store.add("seen:wx:msg1", "2", ttl=TTL) is False
    assert await store.get("seen:wx:msg1") == "1"
    await asyncio.sleep(TTL + 0.2)
    assert await store.add("seen:wx:msg1", "3") is True
    assert await store.add("seen:wx:msg1", "4") is False
    assert await store.get("seen:wx:msg1") == "3"


async def test_concurrent_add_has_exactly_one_winner(store_url: str) -> None:
    """Several connections race for the same key: exactly one of them gets it."""
    stores = [await open_store(store_url) for _ in range(4)]
    try:
        for round_ in range(3):
            wins = await asyncio.gather(
                *(s.add(f"lock:{round_}", str(i), ttl=30) for i, s in enumerate(stores * 5))
            )
            assert sum(wins) == 1
    finally:
        for s in stores:
            await s.close()


_RACER = """
import asyncio, sys
from bot.store import open_store

async def main(url):
    store = await open_store(url)
    won = [await store.add(f"race:{i}", "x", ttl=60) for i in range(30)]
    await store.close()
    print("".join("1" if w else "0" for w in won))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_add_is_atomic_across_processes(store: Store, store_url: str) -> None:
    await store.get("warm-up")  # the schema exists before the racers start
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _RACER, store_url, stdout=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [(await p.communicate())[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for i in range(30):
        assert sum(out[i] == "1" for out in outputs) == 1


async def test_delete_if_deletes_only_a_key_holding_the_value(store: Store) -> None:
    """An in-flight lease whose round trip failed is freed by its token: never a slot that
    another request holds by now."""
    slot = "inflight:tg:1:0"
    assert await store.delete_if(slot, "mine") is False
    await store.set(slot, "theirs", ttl=60)
    assert await store.delete_if(slot, "mine") is False
    assert await store.get(slot) == "theirs"
    assert await store.delete_if(slot, "theirs") is True
    assert await store.get(slot) is None
    assert await store.delete_if(slot, "theirs") is False
    # In a batch like the other ops, in order, each with its own answer.
    assert await store.batch(
        [
            ("add", slot, "t1", 60),
            ("delete_if", slot, "t2"),
            ("get", slot),
            ("delete_if", slot, "t1"),
            ("add", slot, "t3", 60),
        ]
    ) == [True, False, "t1", True, True]
    assert await store.get(slot) == "t3"
    # An expired key reads as absent here too (and takes a new value as usual).
    await store.set("gone", "t4", ttl=TTL)
    await asyncio.sleep(TTL + 0.2)
    assert await store.delete_if("gone", "t4") is False
    assert await store.add("gone", "t5", ttl=60) is True
    assert await store.delete_if("gone", "t4") is False
    assert await store.get("gone") == "t5"


async def test_concurrent_delete_if_has_exactly_one_winner(store_url: str) -> None:
    """Several connections free the same slot with the right token: one deletes it, and a
    slot taken again meanwhile by another token is never deleted."""
    stores = [await open_store(store_url) for _ in range(3)]
    try:
        for round_ in range(3):
            slot = f"inflight:race:{round_}"
            await stores[0].set(slot, "mine", ttl=60)
            calls = [s.delete_if(slot, "mine") for s in stores * 4]
            calls += [s.add(slot, "theirs", ttl=60) for s in stores]
            results = await asyncio.gather(*calls)
            assert sum(results[:12]) == 1
            value = await stores[0].get(slot)
            assert value == ("theirs" if any(results[12:]) else None)
            assert sum(results[12:]) <= 1
    finally:
        for s in stores:
            await s.close()


async def test_incr_counts_and_starts_again_after_expiry(store: Store) -> None:
    """Rate limits: a counter per window, fresh once the window has passed."""
    assert [await store.incr("rate:tg:1", ttl=TTL) for _ in range(3)] == [1, 2, 3]
    assert await store.get("rate:tg:1") == "3"
    await asyncio.sleep(TTL + 0.2)
    assert await store.incr("rate:tg:1", ttl=TTL) == 1
    assert await store.incr("total") == 1
    assert await store.incr("total") == 2


async def test_concurrent_incr_loses_no_count(store_url: str) -> None:
    stores = [await open_store(store_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.incr("hits", ttl=60) for s in stores * 10))
        assert await stores[0].get("hits") == "30"
    finally:
        for s in stores:
            await s.close()


async def test_sets(store: Store) -> None:
    assert await store.smembers("mj:tasks") == set()
    await store.sadd("mj:tasks", "t1")
    await store.sadd("mj:tasks", "t2")
    await store.sadd("mj:tasks", "t1")
    await store.sadd("other", "t9")
    assert await store.smembers("mj:tasks") == {"t1", "t2"}
    await store.srem("mj:tasks", "t1")
    await store.srem("mj:tasks", "nope")
    assert await store.smembers("mj:tasks") == {"t2"}


async def test_get_many_reads_several_keys_in_order(store: Store) -> None:
    """The chat path reads the chosen model and the history in one round trip."""
    await store.set("model:tg:1", "gpt-4")
    await store.set("conv:tg:1", "[]", ttl=60)
    await store.set("gone", "x", ttl=TTL)
    await asyncio.sleep(TTL + 0.2)
    assert await store.get_many(["conv:tg:1", "missing", "model:tg:1", "gone"]) == [
        "[]",
        None,
        "gpt-4",
        None,
    ]
    assert await store.get_many([]) == []


async def test_calls_made_together_each_get_their_own_answer(store: Store) -> None:
    """Concurrent calls may share one batch (one transaction / one pipeline): each still gets
    its own answer, and a refused one does not undo the others."""
    await store.set("k", "1")
    await store.set("d", "x")
    await store.sadd("t", "b")
    results = await asyncio.gather(
        store.add("k", "2"),
        store.add("fresh", "3", ttl=60),
        store.get("k"),
        store.delete("never"),
        store.delete("d"),
        store.incr("n"),
        store.get_many(["k", "missing"]),
        store.sadd("s", "a"),
        store.smembers("t"),
        store.set("other", "v", ttl=60),
    )
    assert results == [False, True, "1", False, True, 1, ["1", None], None, {"b"}, None]
    assert await store.get_many(["fresh", "d", "other", "k"]) == ["3", None, "v", "1"]
    assert await store.smembers("s") == {"a"}


async def test_batch_runs_calls_in_order_with_their_own_answers(store: Store) -> None:
    """The chat path takes its lease and reads in one round trip, and saves the history and
    frees the lease in another: each call answers as it would alone, in order."""
    await store.set("model:tg:1", "gpt-4")
    assert await store.batch(
        [("add", "inflight:tg:1:0", "t1", 60), ("get_many", ["model:tg:1", "conv:tg:1:c"])]
    ) == [True, ["gpt-4", None]]
    assert await store.batch([("add", "inflight:tg:1:0", "t2", 60), ("get", "x")]) == [False, None]
    assert await store.batch(
        [("set", "conv:tg:1:c", "[1]", 60), ("delete", "inflight:tg:1:0"), ("incr", "n", 60)]
    ) == [None, True, 1]
    assert await store.batch(
        [("get", "conv:tg:1:c"), ("add", "inflight:tg:1:0", "t3", 60), ("incr", "n")]
    ) == ["[1]", True, 2]
    assert await store.batch([("sadd", "s", "a"), ("smembers", "s"), ("srem", "s", "a")]) == [
        None,
        {"a"},
        None,
    ]
    assert await store.batch([]) == []


def test_hiredis_packs_the_same_bytes_as_redis_py() -> None:
    """The Redis store packs commands with hiredis: byte for byte what redis-py would send."""
    from redis.asyncio.connection import Connection

    from billing.storage import redis_client

    if not redis_client.HIREDIS_AVAILABLE:
        pytest.skip("hiredis is not installed")
    packed = redis_client.hiredis_packed(Connection)(decode_responses=True)
    plain = Connection(decode_responses=True)
    big = "\u4f60\u597d, \u00e9t\u00e9 \U0001f600 " * 2000  # past redis-py's 6,000-byte chunking
    commands = [
        ("SET", "creditbot:kv:seen:tg:1", "1", "PX", 86_400_000, "NX"),
        ("MGET", "creditbot:kv:ident:tg:1", "creditbot:kv:model:tg:1", "creditbot:kv:conv:x"),
        ("SET", "creditbot:kv:conv:tg:1:c", big, "PX", 2_592_000_000),
        ("DEL", "creditbot:kv:inflight:tg:1:0"),
        ("SADD", "creditbot:set:linked:tg:1", "wechat:o\u00e9"),
        ("INCR", "creditbot:kv:n"),
        ("CONFIG GET", "maxmemory"),
        ("SET", "k", b"raw bytes", "PX", -1),
    ]
    for command in commands:
        assert b"".join(packed.pack_command(*command)) == b"".join(plain.pack_command(*command))
    assert b"".join(packed.pack_commands(commands)) == b"".join(plain.pack_commands(commands))


async def test_the_redis_store_and_wallet_connect_with_hiredis_packing(redis_url: str) -> None:
    from billing.storage import redis_client

    wallet = await billing.open_wallet(redis_url)
    try:
        cls = wallet._redis.connection_pool.connection_class  # type: ignore[attr-defined]
        assert cls.__name__.startswith("HiredisPacked") == redis_client.HIREDIS_AVAILABLE
        await wallet.credit("a", 5_000, "fund", "t")
        hold = await wallet.hold("a", 1_000, "h", 60)
        assert (await wallet.capture(hold.id, 400)).amount == -400
    finally:
        await wallet.close()
    store = await open_store(redis_url)
    try:
        connection_class = store._redis.connection_pool.connection_class  # type: ignore[attr-defined]
        packs_in_c = connection_class.__name__.startswith("HiredisPacked")
        assert packs_in_c == redis_client.HIREDIS_AVAILABLE
        assert await store.batch([("add", "k", "v", 60), ("get_many", ["k", "none"])]) == [
            True,
            ["v", None],
        ]
    finally:
        await store.close()
