"""A running simulated upstream per test (fast Midjourney tasks)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from simulator import Simulator, start_simulator


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = await start_simulator(mj_duration=0.15)
    yield simulator
    await simulator.close()
