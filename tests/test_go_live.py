"""The operator's first hour: `cp .env.example .env`, a bot token, `creditbot run`.

The real command in a child process, against the fake Bot API: it serves users and /healthz
says ok; with Telegram unreachable it stays up, keeps trying and /healthz says so (503). It
stops on SIGTERM with status 0 and never prints a traceback.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from fakes import telegram_updates as u
from fakes.telegram_api import TOKEN, FakeBotAPI
from tests.test_config import EXAMPLE, clean_env

START_TIMEOUT = 120.0  # a cold start imports aiogram: slow on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def creditbot_run(cwd: Path, **env: str) -> AsyncIterator[tuple[str, list[str]]]:
    """`creditbot run` in `cwd` (which has the .env); yields its base URL and, once it has
    stopped, its stderr lines. The process must exit 0 on SIGTERM."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "run",
        cwd=cwd,
        env=clean_env(HTTP_HOST="127.0.0.1", HTTP_PORT=str(port), **env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr: list[str] = []
    try:
        yield f"http://127.0.0.1:{port}", stderr
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            stderr.extend((await proc.stderr.read()).decode(errors="replace").splitlines())
            code = await proc.wait()
    assert code == 0, "\n".join(stderr)
    assert not any("Traceback" in line for line in stderr), "\n".join(stderr)


async def healthz(base: str, want: int) -> dict:
    """Ask /healthz until it answers `want` (the server starts a moment after the process)."""
    async with httpx.AsyncClient(timeout=5.0) as http, asyncio.timeout(START_TIMEOUT):
        while True:
            try:
                answer = await http.get(f"{base}/healthz")
                if answer.status_code == want:
                    return answer.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


@pytest.fixture
def operator_dir(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLE, tmp_path / ".env")
    return tmp_path


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeBotAPI]:
    api = await FakeBotAPI().start()
    yield api
    await api.close()


@pytest.mark.slow
async def test_env_example_and_a_token_make_a_live_bot(
    operator_dir: Path, fake_api: FakeBotAPI
) -> None:
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": fake_api.url}
    async with creditbot_run(operator_dir, **env) as (base, _):
        body = await healthz(base, 200)
        assert body["status"] == "ok"
        assert body["checks"]["telegram"] == {"status": "ok", "detail": "polling"}
        assert {"wallet", "store", "upstream"} <= set(body["checks"])
        fake_api.updates.append(u.message("/help"))
        await fake_api.wait_for("sendMessage")  # answered by the live bot
    assert (operator_dir / "data" / "creditbot.db").exists()


@pytest.mark.slow
async def test_unreachable_telegram_is_named_and_the_process_stays_up(
    operator_dir: Path,
) -> None:
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": "http://api.telegram.invalid"}
    async with creditbot_run(operator_dir, **env) as (base, stderr):
        body = await healthz(base, 503)
        assert body["status"] == "down"
        assert body["checks"]["telegram"] == {"status": "down", "detail": "Bot API unreachable"}
        assert body["checks"]["wallet"] == {"status": "ok"}
        await asyncio.sleep(1.5)  # still up, still trying
        assert (await healthz(base, 503))["checks"]["telegram"]["status"] == "down"
    assert any("Telegram: cannot connect" in line for line in stderr)
