"""bench.core: the open-loop phase and the verdict against issue 3's targets."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench import core as bench


async def test_open_loop_answers_every_message_one_in_flight_per_user() -> None:
    """Few users at a high rate: each user's messages queue behind their previous reply (a
    second message in flight would be told to wait and get no reply, failing the run)."""
    result = await bench.run_backend(
        "memory",
        "sqlite+aiosqlite:///:memory:",
        messages=40,
        users=4,
        concurrency=2,
        rate=400,
        seconds=0.25,
        open_users=3,
    )
    assert result.messages == 40 and len(result.latencies) == 40
    opened = result.open
    assert opened is not None
    assert len(opened.latencies) == 100 == len(opened.lags)
    assert all(latency > 0 for latency in opened.latencies)
    assert all(lag >= 0 for lag in opened.lags)
    assert opened.seconds > 0.24  # the last message was due at 0.2475 s
    assert "msg/s offered" in result.open_line()
    assert result.verdict().startswith("verdict memory: ")


async def test_open_loop_latency_counts_from_the_schedule_not_the_start() -> None:
    """A message that cannot start on time (the core stalled) is late by the whole stall."""

    async def stalling(user: str, n: int) -> tuple[float, float]:
        if n == 0:
            await asyncio.sleep(0.05)
        return 0.0, time.perf_counter()

    stall = 0.05
    opened = await bench.open_loop(stalling, rate=1000, seconds=0.02, users=1)
    # Twenty messages of one user, 1 ms apart, all behind the first one's 50 ms stall: the
    # last one was due at 19 ms and answered after 50, so it waited at least 30 ms.
    assert len(opened.latencies) == 20
    assert opened.latencies[0] >= stall
    assert opened.latencies[-1] >= stall - 0.019 - 0.001
    assert not opened.sustained  # 20 messages in >= 50 ms is < 97% of 1000/s


def _result(backend: str, *, max_rate: float, p99_ms: float, answered: float) -> bench.Result:
    latencies = [p99_ms / 1000] * 100
    opened = bench.OpenLoop(
        rate=1000, users=10, latencies=latencies, seconds=100 / answered, cpu=0.01
    )
    result = bench.Result(backend, 1000, 1000 / max_rate, [0.001], [0.001], 0.1, 64, opened)
    result.target = bench.TARGET_RATE[backend]
    return result


def test_verdict_needs_every_target() -> None:
    good = _result("sqlite", max_rate=3000, p99_ms=2, answered=1000).verdict()
    assert good.startswith("verdict sqlite: PASS")
    slow = _result("sqlite", max_rate=3000, p99_ms=7, answered=1000).verdict()
    assert slow.startswith("verdict sqlite: FAIL") and "p99 7.00 ms >= 5 ms" in slow
    behind = _result("sqlite", max_rate=3000, p99_ms=2, answered=900).verdict()
    assert "FAIL" in behind and "NOT sustained" in behind
    short = _result("redis", max_rate=2500, p99_ms=2, answered=1000).verdict()
    assert "FAIL" in short and "max 2500 msg/s < 3000" in short


async def test_open_loop_fails_when_a_message_fails() -> None:
    async def failing(user: str, n: int) -> tuple[float, float]:
        if n == 3:
            raise AssertionError("no reply")
        return 0.0, time.perf_counter()

    with pytest.raises(AssertionError, match="no reply"):
        await bench.open_loop(failing, rate=500, seconds=0.02, users=2)
