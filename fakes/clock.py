"""A clock a test moves forward, for code that takes a `clock` (a `time.time`-like callable)."""

from __future__ import annotations

import time


class Clock:
    """Wall-clock time plus an offset: `advance(seconds)` stands in for sleeping that long."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
