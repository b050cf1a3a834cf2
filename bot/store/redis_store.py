"""The bot's key-value store on Redis: plain strings with PX expiry, plain sets.

Keys are `creditbot:kv:KEY` and sets `creditbot:set:NAME`, apart from the wallet's `{acct:..}`
keys in the same database. Redis expires keys itself, SET NX makes `add` atomic everywhere, and
a Lua script does the same for `delete_if`.

Commands are auto-pipelined (see `AutoPipeline`): calls made while others are on the wire go
out together, each still atomic and in order, so results are the same and the cost is lower.
They are sent as plain `execute_command` calls (no redis-py command method to build each) and
packed by hiredis where it is installed (`billing.storage.redis_client.hiredis_packed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from billing.storage.redis_client import AutoPipeline, connect
from bot.store.base import Op, OpStore, run_in_order

KV_PREFIX = "creditbot:kv:"
SET_PREFIX = "creditbot:set:"


# DEL only if the key holds ARGV[1]: one script, so nothing can come between the read and the
# delete (a slot taken by another request in between stays taken).
_DELETE_IF = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def _same(value: Any) -> Any:
    return value


def _none(_value: Any) -> None:
    return None


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisStore(OpStore):
    """Store protocol on Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._pipe = AutoPipeline(client)

    @classmethod
    async def open(cls, url: str) -> RedisStore:
        client = connect(url)  # packs commands with hiredis where installed
        await client.ping()
        return cls(client)

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
        run = "execute_command"  # the command as it goes on the wire, no redis-py method
        if name == "get":
            return run, ("GET", KV_PREFIX + args[0]), {}, same
        if name == "get_many":
            keys = [KV_PREFIX + k for k in args[0]]
            return (run, ("MGET", *keys), {}, list) if keys else ("mget", ([],), {}, list)
        if name in ("set", "add"):
            ttl = args[2] if len(args) > 2 else None
            command: tuple[Any, ...] = ("SET", KV_PREFIX + args[0], args[1])
            if ttl is not None:
                command += ("PX", _ms(ttl))
            if name == "add":
                return run, (*command, "NX"), {}, bool
            return run, command, {}, _none
        if name == "delete":
            return run, ("DEL", KV_PREFIX + args[0]), {}, bool
        if name == "delete_if":
            return run, ("EVAL", _DELETE_IF, 1, KV_PREFIX + args[0], args[1]), {}, bool
        if name == "incr":
            if len(args) > 1 and args[1] is not None:
                return None
            return run, ("INCR", KV_PREFIX + args[0]), {}, int
        if name in ("sadd", "srem"):
            return run, (name.upper(), SET_PREFIX + args[0], args[1]), {}, _none
        if name == "smembers":
            return run, ("SMEMBERS", SET_PREFIX + args[0]), {}, set
        raise ValueError(f"not a Store call: {name!r}")

    async def _one(self, name: str, *args: Any) -> Any:
        """One Store call on its own (still auto-pipelined with other callers')."""
        command, call_args, kwargs, answer = self._command(name, *args)  # type: ignore[misc]
        return answer(await self._pipe.call(command, *call_args, **kwargs))

    async def incr(self, key: str, ttl: float | None = None) -> int:
        name = KV_PREFIX + key
        if ttl is None:
            return await self._one("incr", key)
        # MULTI/EXEC: the key is born with its expiry, and INCR keeps it.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(name, 0, nx=True, px=_ms(ttl))
            pipe.incr(name)
            _, value = await pipe.execute()
        return int(value)

    async def close(self) -> None:
        await self._pipe.drain()
        await self._redis.aclose()
