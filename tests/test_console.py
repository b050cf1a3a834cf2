"""The console front end as an operator meets it: `creditbot run` with nothing configured."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
        [sys.executable, "-m", "cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=60,
    )


@pytest.mark.slow
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


@pytest.mark.slow
def test_ctrl_c_stops_a_reply_and_bills_what_was_shown(tmp_path: Path) -> None:
    import asyncio
    import pty
    import select
    import time

    from billing.tokens import count_text

    pid, fd = pty.fork()
    if pid == 0:  # the child: the console on a terminal
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-m", "cli", "chat"], clean_env())
    seen = ""

    def wait_for(marker: str, after: int = 0, timeout: float = 30) -> int:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen[after:]:
            assert time.monotonic() < deadline, f"{marker!r} never came: {seen!r}"
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                seen += os.read(fd, 4096).decode(errors="replace")
        return seen.index(marker, after)

    try:
        wait_for("> ")
        question = "Write a long story [[fault:slow]]"
        os.write(fd, question.encode() + b"\r")
        start = wait_for(question) + len(question)
        deadline = time.monotonic() + 30
        while len(seen[start:].strip()) < 3:  # wait for the first piece of the reply
            assert time.monotonic() < deadline, seen
            if select.select([fd], [], [], 0.1)[0]:
                seen += os.read(fd, 4096).decode(errors="replace")
        os.write(fd, b"\x03")  # Ctrl-C
        end = wait_for("[stopped]", start)
        os.write(fd, b"/quit\r")
        os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    shown = seen[start:end].replace("^C", "").strip()

    async def ledger() -> list:
        from billing.wallet import open_wallet

        wallet = await open_wallet(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'creditbot.db'}")
        try:
            return await wallet.entries("console:local")
        finally:
            await wallet.close()

    charge = asyncio.run(ledger())[0]
    assert charge.meta["rule"] == "stopped"
    assert charge.meta["completion_tokens"] == count_text("gpt-3.5-turbo", shown)
    assert charge.amount == -PRICES.chat_cost(
        "gpt-3.5-turbo", charge.meta["prompt_tokens"], charge.meta["completion_tokens"]
    )
