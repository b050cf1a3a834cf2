"""The process's event loop: uvloop by default where installed, asyncio on request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

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


def _python(code: str) -> str:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_startup_heap_is_frozen_once_per_process() -> None:
    """In a process of its own: freezing is process-wide."""
    out = _python(
        "import gc; from bot import runtime\n"
        "first = runtime.freeze_startup_heap(); frozen = gc.get_freeze_count()\n"
        "again = runtime.freeze_startup_heap()\n"
        "print(first, again, frozen > 1000, gc.get_freeze_count() == frozen)"
    )
    assert out.split() == ["True", "False", "True", "True"]


@pytest.mark.slow
def test_core_start_loads_the_tokenizers_then_freezes(tmp_path: Path) -> None:
    """After Core.start() a user's first message builds no tokenizer, and a full collection
    no longer walks what start-up made."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    out = _python(
        "import asyncio, gc\n"
        "from billing import tokens\n"
        "from bot.assemble import assemble\n"
        "from bot.settings import Settings\n"
        "async def main():\n"
        f"    s = Settings(_env_file=None, wallet_url={url!r}, openai_api_key='x')\n"
        "    core = await assemble(s)\n"
        "    before = (gc.get_freeze_count(), sorted(tokens._encodings))\n"
        "    await core.start()\n"
        "    print(before, gc.get_freeze_count() > 10000, sorted(tokens._encodings))\n"
        "    await core.close()\n"
        "asyncio.run(main())"
    )
    assert out.strip() == "(0, []) True ['cl100k_base', 'o200k_base']"
