"""The bot's key-value store on Redis: plain strings with PX expiry, plain sets.

Keys are `creditbot:kv:KEY` and sets `creditbot:set:NAME`, apart from the wallet's `{acct:..}`
keys in the same database. Redis expires keys itself, and SET NX makes `add` atomic everywhere.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from billing.wallet.redis_wallet import connect

KV_PREFIX = "creditbot:kv:"
SET_PREFIX = "creditbot:set:"


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisStore:
    """Store protocol on Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    async def open(cls, url: str) -> RedisStore:
        client = connect(url)
        await client.ping()
        return cls(client)

    async def get(self, key: str) -> str | None:
        return await self._redis.get(KV_PREFIX + key)

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        await self._redis.set(KV_PREFIX + key, value, px=None if ttl is None else _ms(ttl))

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        px = None if ttl is None else _ms(ttl)
        return bool(await self._redis.set(KV_PREFIX + key, value, nx=True, px=px))

    async def delete(self, key: str) -> bool:
        return bool(await self._redis.delete(KV_PREFIX + key))

    async def incr(self, key: str, ttl: float | None = None) -> int:
        name = KV_PREFIX + key
        if ttl is None:
            return int(await self._redis.incr(name))
        # MULTI/EXEC: the key is born with its expiry, and INCR keeps it.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(name, 0, nx=True, px=_ms(ttl))
            pipe.incr(name)
            _, value = await pipe.execute()
        return int(value)

    async def sadd(self, name: str, member: str) -> None:
        await self._redis.sadd(SET_PREFIX + name, member)

    async def srem(self, name: str, member: str) -> None:
        await self._redis.srem(SET_PREFIX + name, member)

    async def smembers(self, name: str) -> set[str]:
        return set(await self._redis.smembers(SET_PREFIX + name))

    async def close(self) -> None:
        await self._redis.aclose()
