"""The one scheduler: every periodic job runs on its own interval, survives its own failures,
and stops with the core."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.scheduler import MIN_INTERVAL, Scheduler


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Until `predicate()` holds (5 s at most)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_jobs_wait_for_start_and_run_at_start_or_after_one_interval() -> None:
    runs: list[str] = []

    def job(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            runs.append(name)

        return run

    scheduler = Scheduler()
    scheduler.every("now", 3600, job("now"), at_start=True)
    scheduler.every("later", 3600, job("later"))
    await asyncio.sleep(0.05)
    assert runs == []  # nothing before start
    scheduler.start()
    await wait_until(lambda: runs == ["now"])
    await asyncio.sleep(0.05)
    assert runs == ["now"]  # "later" waits its hour
    await scheduler.stop()
    assert not scheduler.running and sorted(scheduler.jobs) == ["later", "now"]


async def test_a_failing_job_runs_again_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = {"bad": 0, "good": 0}

    async def bad() -> None:
        calls["bad"] += 1
        raise ConnectionError("the store went away")

    async def good() -> None:
        calls["good"] += 1

    scheduler = Scheduler()
    scheduler.every("bad", 0.01, bad, at_start=True)
    scheduler.every("good", 0.01, good, at_start=True)
    scheduler.start()
    try:
        await wait_until(lambda: calls["bad"] >= 3 and calls["good"] >= 3)
    finally:
        await scheduler.stop()
    assert "scheduled job bad failed" in caplog.text


async def test_a_job_added_while_running_starts_and_a_cancelled_one_stops_at_once() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # e.g. WeChat Pay not answering
        except asyncio.CancelledError:
            cancelled.set()
            raise

    scheduler = Scheduler()
    scheduler.start()
    scheduler.every("slow", 60, slow, at_start=True)
    await asyncio.wait_for(started.wait(), 5)
    await scheduler.cancel("slow")
    assert cancelled.is_set() and scheduler.jobs == []
    await scheduler.cancel("slow")  # again, or a name never added: nothing to do
    await scheduler.stop()
    await scheduler.stop()


async def test_a_job_of_the_same_name_is_replaced_and_intervals_have_a_floor() -> None:
    runs: list[str] = []

    async def first() -> None:
        runs.append("first")

    async def second() -> None:
        runs.append("second")

    scheduler = Scheduler()
    scheduler.start()
    scheduler.every("retry", 0, first)  # 0 would spin: MIN_INTERVAL instead
    await wait_until(lambda: "first" in runs)
    scheduler.every("retry", MIN_INTERVAL, second)
    await wait_until(lambda: runs.count("second") >= 2)
    count = runs.count("first")
    await asyncio.sleep(MIN_INTERVAL * 3)
    assert runs.count("first") == count  # the first job no longer runs
    await scheduler.stop()


async def test_stopping_waits_for_a_running_job_to_be_cancelled() -> None:
    inside = asyncio.Event()
    finished: list[bool] = []

    async def job() -> None:
        inside.set()
        try:
            await asyncio.sleep(60)
        finally:
            finished.append(True)

    scheduler = Scheduler()
    scheduler.every("job", 60, job, at_start=True)
    scheduler.start()
    await asyncio.wait_for(inside.wait(), 5)
    await scheduler.stop()
    assert finished == [True]  # cleaned up before stop() returned
