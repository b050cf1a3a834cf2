"""`creditbot run` with a front end that cannot be imported: an error at start, naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.http import FrontEndError, import_front_ends
from bot.settings import Settings

CREDITBOT = str(Path(sys.executable).parent / "creditbot")


def clean_env() -> dict[str, str]:
    """The environment without any creditbot setting."""
    names = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in names}


def run_without(module: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`creditbot run` in a process where importing `module` fails (as on a broken install)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    return subprocess.run(
        [CREDITBOT, "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean_env(), "PYTHONPATH": str(hooks), **env},
        timeout=60,
    )


def test_a_front_end_that_fails_to_import_stops_the_start(tmp_path: Path) -> None:
    done = run_without("wechatpy", tmp_path, TELEGRAM_BOT_TOKEN="123:abc")
    assert done.returncode == 1, done.stderr
    assert "front end adapters.wechat failed to import" in done.stderr
    assert "wechatpy" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_a_configured_front_end_whose_library_fails_to_import_stops_the_start(
    tmp_path: Path,
) -> None:
    done = run_without("aiogram", tmp_path, TELEGRAM_BOT_TOKEN="123:abc")
    assert done.returncode == 1, done.stderr
    assert "front end adapters.telegram failed to import" in done.stderr
    assert "aiogram" in done.stderr


def test_import_front_ends_names_the_one_that_failed() -> None:
    failed = re.escape("front end adapters.nowhere failed to import")
    with pytest.raises(FrontEndError, match=failed):
        import_front_ends(("adapters.console", "adapters.nowhere"))
    assert [m.__name__ for m in import_front_ends()] == [
        "adapters.telegram",
        "adapters.wechat",
        "adapters.wechat.wechatpay",
    ]
