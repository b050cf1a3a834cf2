"""A small key-value store for the core's state: conversations, identities, dedupe, tasks.

It lives beside the wallet (the same SQL database or Redis), but holds no money. Money goes
only through `billing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Store(Protocol):
    """String keys to string values, with optional expiry and simple sets."""

    async def get(self, key: str) -> str | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """Several `get`s in one round trip, in the order of `keys` (None for absent)."""
        ...

    async def set(self, key: str, value: str, ttl: float | None = None) -> None: ...

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """Set only if absent (or expired); True if this call set it. Atomic across processes."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def delete_if(self, key: str, value: str) -> bool:
        """Delete `key` only if it holds `value`; True if this call deleted a live key. Atomic
        across processes: an in-flight lease is freed this way when it is unknown whether the
        slot is still ours (it may be another request's by now, and must stay)."""
        ...

    async def incr(self, key: str, ttl: float | None = None) -> int:
        """Add one and return the new value; `ttl` applies when the key is created."""
        ...

    async def sadd(self, name: str, member: str) -> None: ...

    async def srem(self, name: str, member: str) -> None: ...

    async def smembers(self, name: str) -> set[str]: ...

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        """Several calls in one round trip, run in order; each answer as its call would give.

        Each op is `(method name, *args)`, e.g. `("add", key, value, ttl)`, `("get_many", keys)`,
        `("set", key, value, ttl)`, `("delete", key)`, `("delete_if", key, value)`. Each stays
        atomic on its own (the batch is not a transaction: a later op sees the earlier ones'
        effects, another process may interleave). If an op fails, its error is raised; later
        ops may or may not have run.
        """
        ...

    async def close(self) -> None: ...


Op = tuple[Any, ...]


class OpStore:
    """The Store methods on top of one `_one(name, *args)`: the op that `batch` also takes.

    A store that answers ops (SQLite's writer functions, Redis commands) writes only `_one` and
    `batch`; each method is the same op sent alone, so a call and a batched op cannot differ.
    """

    async def _one(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    async def get(self, key: str) -> str | None:
        return await self._one("get", key)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        keys = list(keys)
        return await self._one("get_many", keys) if keys else []

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        await self._one("set", key, value, ttl)

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        return await self._one("add", key, value, ttl)

    async def delete(self, key: str) -> bool:
        return await self._one("delete", key)

    async def delete_if(self, key: str, value: str) -> bool:
        return await self._one("delete_if", key, value)

    async def incr(self, key: str, ttl: float | None = None) -> int:
        return await self._one("incr", key, ttl)

    async def sadd(self, name: str, member: str) -> None:
        await self._one("sadd", name, member)

    async def srem(self, name: str, member: str) -> None:
        await self._one("srem", name, member)

    async def smembers(self, name: str) -> set[str]:
        return await self._one("smembers", name)


async def run_in_order(store: Any, ops: Sequence[Op]) -> list[Any]:
    """`batch` for a store without a faster way: the calls one after another."""
    return [await getattr(store, op[0])(*op[1:]) for op in ops]


async def batch(store: Any, ops: Sequence[Op]) -> list[Any]:
    """`store.batch(ops)`, or the calls one by one on a Store written before `batch`."""
    fn = getattr(store, "batch", None)
    return await (fn(ops) if fn is not None else run_in_order(store, ops))
