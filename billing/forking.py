"""What a forked child must not use of its parent's: threads, sockets, locks, queued calls.

multiprocessing's default start method on Linux and pre-fork servers fork a process that may
already have opened a wallet or a store. The child inherits the objects but not the threads
behind them (SQLite's writer thread, aiosqlite's), and shares the parent's sockets (a
PostgreSQL or Redis connection used from both processes would mix their replies). So each such
object says here what a child must do (`reset_in_child`): drop what was the parent's and start
afresh on first use. What was the parent's is kept (`keep`), never used and never closed:
closing a SQLite handle or a socket in the child could disturb the parent.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_RESETS: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
_KEPT: list[Any] = []


def reset_in_child(owner: T, reset: Callable[[T], None]) -> None:
    """Call `reset(owner)` in every forked child, for as long as `owner` lives.

    `reset` must not hold `owner` itself (that would keep it alive for good): it gets it as
    its argument.
    """
    _RESETS[owner] = reset


def keep(thing: Any) -> None:
    """In a child: hold on to the parent's `thing` for good, never used, never closed."""
    _KEPT.append(thing)


def _after_fork_in_child() -> None:
    for owner, reset in list(_RESETS.items()):
        reset(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
