"""How the process runs its event loop: uvloop where it is installed, else asyncio's own.

uvloop (a libuv event loop) roughly halves the loop's own cost per await and per socket
read, which is most of what a busy bot process does between its store round trips
(docs/performance.md). It is a dependency on Linux and macOS; `EVENT_LOOP=asyncio` turns it
off, and where it is missing (Windows) the standard loop runs without a word.

`freeze_startup_heap()` keeps the garbage collector's full collections short: see there.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopChoice = Literal["auto", "uvloop", "asyncio"]

log = logging.getLogger(__name__)


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop constructor for `choice`; None means asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """`asyncio.run(main)` on the chosen loop (default: the EVENT_LOOP variable, else auto)."""
    choice = choice or os.environ.get("EVENT_LOOP", "auto").strip().lower() or "auto"
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The running loop's kind, for logs and benchmark headers."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


_frozen = False


def freeze_startup_heap() -> bool:
    """Put everything alive now out of the garbage collector's reach (`gc.freeze`), once per
    process; True if this call did. `Core.start()` calls it when start-up is done.

    What start-up made (modules, settings, clients, the price list, tokenizers: ~110,000
    objects) lives as long as the process, yet each full collection walked all of it: 30-60 ms
    with the event loop stopped, every message in flight delayed by as much, a few times a
    minute under load. Frozen, they are skipped; garbage made before is collected first, and
    everything made afterwards is collected as usual.
    """
    global _frozen
    if _frozen:
        return False
    _frozen = True
    gc.collect()
    gc.freeze()
    log.debug("froze %d start-up objects out of the garbage collector", gc.get_freeze_count())
    return True
