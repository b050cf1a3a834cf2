"""A small key-value store for the core's state: conversations, identities, dedupe, tasks.

It lives beside the wallet (the same SQL database or Redis), but holds no money. Money goes
only through `billing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


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

    async def incr(self, key: str, ttl: float | None = None) -> int:
        """Add one and return the new value; `ttl` applies when the key is created."""
        ...

    async def sadd(self, name: str, member: str) -> None: ...

    async def srem(self, name: str, member: str) -> None: ...

    async def smembers(self, name: str) -> set[str]: ...

    async def close(self) -> None: ...
