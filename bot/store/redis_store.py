"""The bot's key-value store on Redis: plain strings with PX expiry, plain sets.

Keys are `creditbot:kv:KEY` and sets `creditbot:set:NAME`, apart from the wallet's `{acct:..}`
keys in the same database. Redis expires keys itself, and SET NX makes `add` atomic everywhere.

Commands are auto-pipelined (see `AutoPipeline`): calls made while others are on the wire go
out together, each still atomic and in order, so results are the same and the cost is lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from billing.wallet.redis_wallet import AutoPipeline, connect
from bot.store.base import Op, run_in_order

KV_PREFIX = "creditbot:kv:"
SET_PREFIX = "creditbot:set:"


def _same(value: Any) -> Any:
    return value


def _none(_value: Any) -> None:
    return None


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisStore:
    """Store protocol on Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._pipe = AutoPipeline(client)

    @classmethod
    async def open(cls, url: str) -> RedisStore:
        client = connect(url)
        await client.ping()
        return cls(client)

    async def _call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        return await self._pipe.call(command, *args, **kwargs)

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        """Every op in one pipeline (non-transactional), in order."""
        calls = [self._command(op[0], *op[1:]) for op in ops]
        if any(call is None for call in calls):  # incr with a ttl is a MULTI of its own
            return await run_in_order(self, ops)
        results = await self._pipe.call_many([call[:3] for call in calls])  # type: ignore[index]
        out = []
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, Exception):
                raise result
            out.append(call[3](result))  # type: ignore[index]
        return out

    @staticmethod
    def _command(name: str, *args: Any) -> tuple[str, tuple[Any, ...], dict[str, Any], Any] | None:
        """The redis-py call for one Store op, and how to turn its reply into the answer."""
        same = _same
        if name == "get":
            return "get", (KV_PREFIX + args[0],), {}, same
        if name == "get_many":
            return "mget", ([KV_PREFIX + k for k in args[0]],), {}, list
        if name in ("set", "add"):
            ttl = args[2] if len(args) > 2 else None
            kwargs = {"px": None if ttl is None else _ms(ttl)}
            if name == "add":
                return "set", (KV_PREFIX + args[0], args[1]), {**kwargs, "nx": True}, bool
            return "set", (KV_PREFIX + args[0], args[1]), kwargs, _none
        if name == "delete":
            return "delete", (KV_PREFIX + args[0],), {}, bool
        if name == "incr":
            return (
                None
                if len(args) > 1 and args[1] is not None
                else ("incr", (KV_PREFIX + args[0],), {}, int)
            )
        if name in ("sadd", "srem"):
            return name, (SET_PREFIX + args[0], args[1]), {}, _none
        if name == "smembers":
            return "smembers", (SET_PREFIX + args[0],), {}, set
        raise ValueError(f"not a Store call: {name!r}")

    async def get(self, key: str) -> str | None:
        return await self._call("get", KV_PREFIX + key)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """Several values in one MGET, in the order of `keys` (None for absent)."""
        keys = list(keys)
        return list(await self._call("mget", [KV_PREFIX + k for k in keys])) if keys else []

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        await self._call("set", KV_PREFIX + key, value, px=None if ttl is None else _ms(ttl))

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        px = None if ttl is None else _ms(ttl)
        return bool(await self._call("set", KV_PREFIX + key, value, nx=True, px=px))

    async def delete(self, key: str) -> bool:
        return bool(await self._call("delete", KV_PREFIX + key))

    async def incr(self, key: str, ttl: float | None = None) -> int:
        name = KV_PREFIX + key
        if ttl is None:
            return int(await self._call("incr", name))
        # MULTI/EXEC: the key is born with its expiry, and INCR keeps it.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(name, 0, nx=True, px=_ms(ttl))
            pipe.incr(name)
            _, value = await pipe.execute()
        return int(value)

    async def sadd(self, name: str, member: str) -> None:
        await self._call("sadd", SET_PREFIX + name, member)

    async def srem(self, name: str, member: str) -> None:
        await self._call("srem", SET_PREFIX + name, member)

    async def smembers(self, name: str) -> set[str]:
        return set(await self._call("smembers", SET_PREFIX + name))

    async def close(self) -> None:
        await self._pipe.drain()
        await self._redis.aclose()
