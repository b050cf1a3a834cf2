"""The process's event loop: uvloop by default where installed, asyncio on request."""

from __future__ import annotations

import asyncio
import sys

import pytest
from pydantic import ValidationError

from bot import runtime
from bot.settings import Settings


async def _kind() -> str:
    await asyncio.sleep(0)
    return runtime.loop_name()


def test_auto_runs_uvloop_where_installed() -> None:
    pytest.importorskip("uvloop")
    assert runtime.run(_kind(), "auto") == "uvloop"
    assert runtime.run(_kind(), "uvloop") == "uvloop"


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.run(_kind(), "asyncio") == "asyncio"
    monkeypatch.setenv("EVENT_LOOP", "asyncio")
    assert runtime.run(_kind()) == "asyncio"


def test_missing_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert runtime.run(_kind(), "auto") == "asyncio"  # falls back without a word
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        runtime.loop_factory("uvloop")


def test_setting_is_checked() -> None:
    assert Settings(_env_file=None).event_loop == "auto"  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(_env_file=None, event_loop="twisted")  # type: ignore[call-arg]
