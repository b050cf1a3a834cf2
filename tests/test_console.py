"""The console front end as an operator meets it: `creditbot run` with nothing configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from billing.money import format_credits
from billing.pricing import PriceList
from billing.tokens import count_messages
from bot.settings import Settings

PRICES = PriceList.load()


def clean_env() -> dict[str, str]:
    """The environment without any creditbot setting: a fresh machine."""
    names = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in names}


def run(args: list[str], stdin: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=60,
    )


def test_run_with_nothing_configured_is_a_simulated_console_chat(tmp_path: Path) -> None:
    text = "hello there [[tokens:20]]"
    done = run(["run"], f"{text}\n/balance\n/usage\n", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "SIMULATED" in done.stderr and "OPENAI_API_KEY" in done.stderr
    assert "100 demo credits" in done.stderr
    assert (tmp_path / "data" / "creditbot.db").exists()  # SQLite under ./data, made for us
    prompt = count_messages(
        PRICES.get("gpt-3.5-turbo"),
        [
            {"role": "system", "content": Settings.model_fields["system_prompt"].default},
            {"role": "user", "content": text},
        ],
    )
    cost = PRICES.chat_cost("gpt-3.5-turbo", prompt, 20)
    lines = done.stdout.splitlines()
    assert lines[0]  # the reply, printed whole
    assert f"Available: {format_credits(100_000 - cost)} credits" in done.stdout
    assert f"{prompt} prompt + 20 completion tokens" in done.stdout

    # The demo credits are granted once: a second session starts from the same wallet.
    again = run(["chat"], "/balance\n", tmp_path)
    assert "demo credits" not in again.stderr
    assert f"Available: {format_credits(100_000 - cost)} credits" in again.stdout
