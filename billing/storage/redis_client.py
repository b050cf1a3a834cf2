"""Redis for creditbot's stores: one way to connect, and pipelining of concurrent callers.

Used by the wallet on Redis (`billing.wallet.redis_wallet`) and by the bot's Redis store; it
knows no keys, no scripts and no money, only how commands get to the server cheaply:

- `connect(url)`: a client on a blocking pool (callers wait for a connection instead of failing
  under a burst) whose commands are packed by hiredis, in C, where it is installed;
- `AutoPipeline`: the commands of concurrent callers sent together, one pipeline per round trip.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from billing import forking

try:
    from redis.connection import HiredisRespSerializer
    from redis.utils import HIREDIS_AVAILABLE
except ImportError:  # another redis-py: its own packing
    HIREDIS_AVAILABLE = False

__all__ = ["HIREDIS_AVAILABLE", "AutoPipeline", "Call", "connect", "hiredis_packed"]

Call = tuple[str, tuple[Any, ...], dict[str, Any]]  # (method name, args, kwargs)


class AutoPipeline:
    """Sends the commands of concurrent callers together, one pipeline per round trip.

    A call made while nothing is on the wire is sent at once from the caller's own task. Calls
    made while a command or batch is on the wire queue, and go out as one non-transactional
    pipeline (one write, one read) when it returns, in the order they were made. Each command
    is still atomic on its own and the server still runs them in that order, so no result
    changes; what changes is the cost: most of a command's cost here is its system calls, and
    a batch pays them once.
    """

    MAX_BATCH = 512

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._pending: list[tuple[str, tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._busy = False  # a command or batch is on the wire
        forking.reset_in_child(self, AutoPipeline._forget_parent)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's batch on the wire and its callers are not ours."""
        self._pending, self._flusher, self._busy = [], None, False

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """`client.<command>(*args, **kwargs)`, possibly in a batch with other callers'."""
        if self._busy:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending.append((command, args, kwargs, fut))
            return await fut
        self._busy = True
        try:
            return await getattr(self._redis, command)(*args, **kwargs)
        finally:
            self._next()

    async def call_many(self, calls: list[Call]) -> list[Any]:
        """Several commands in one pipeline, in order; each result, or its error, in place."""
        if self._busy:
            loop = asyncio.get_running_loop()
            futs: list[asyncio.Future[Any]] = []
            for command, args, kwargs in calls:
                futs.append(loop.create_future())
                self._pending.append((command, args, kwargs, futs[-1]))
            return list(await asyncio.gather(*futs, return_exceptions=True))
        self._busy = True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for command, args, kwargs in calls:
                    getattr(pipe, command)(*args, **kwargs)
                return list(await pipe.execute(raise_on_error=False))
        finally:
            self._next()

    def _next(self) -> None:
        """After a round trip: send what queued meanwhile (on a task of its own), or go idle."""
        if self._pending:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        else:
            self._busy = False

    async def _flush(self) -> None:
        batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
        try:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for command, args, kwargs, _ in batch:
                        getattr(pipe, command)(*args, **kwargs)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the connection failed: every call in the batch fails
                results = [exc] * len(batch)
            for (_, _, _, fut), result in zip(batch, results, strict=True):
                if fut.done():  # the caller gave up waiting
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        finally:
            self._next()

    async def drain(self) -> None:
        """Wait for every queued call to be answered (before closing the client)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.gather(self._flusher, return_exceptions=True)


_packed: dict[type, type] = {}


def hiredis_packed(base: type) -> type:
    """`base` (a redis-py asyncio connection class) packing commands with hiredis, in C.

    redis-py's synchronous connection packs with hiredis where it is installed; its asyncio one
    always packs in Python, which was the largest single cost of a store call and a good part
    of an EVALSHA's. The bytes sent are the same (tests/bot/test_store.py compares them).
    """
    if base not in _packed:

        class Packed(base):  # type: ignore[misc, valid-type]
            _packer = HiredisRespSerializer()

            def pack_command(self, *args: Any) -> list[bytes]:
                return self._packer.pack(*args)

        Packed.__name__ = Packed.__qualname__ = f"HiredisPacked{base.__name__}"
        _packed[base] = Packed
    return _packed[base]


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client whose callers wait for a free connection instead of failing under a burst.

    `?max_connections=N` in the URL changes the pool size. Commands are packed by hiredis where
    it is installed (see `hiredis_packed`).
    """

    def pool() -> aioredis.BlockingConnectionPool:
        made = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, decode_responses=True
        )
        if HIREDIS_AVAILABLE:  # before the first connection is made
            made.connection_class = hiredis_packed(made.connection_class)
        return made

    def renew(client: aioredis.Redis) -> None:  # a forked child: the parent's sockets are not its
        forking.keep(client.connection_pool)
        client.connection_pool = pool()

    client = aioredis.Redis.from_pool(pool())
    forking.reset_in_child(client, renew)
    return client
