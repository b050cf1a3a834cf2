"""Structured logs carry no secrets and no user text unless debug logging is on."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot import logs
from bot.settings import Settings


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    out = io.StringIO()
    yield out
    root.handlers[:] = before[0]
    root.setLevel(before[1])


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_info_logs_are_json_without_secrets_or_message_text(captured: io.StringIO) -> None:
    settings = Settings(_env_file=None, wechatpay_api_key="merchant-secret-value-123")
    logs.setup_logging("INFO", settings=settings, stream=captured)
    log = logging.getLogger("creditbot.test")
    log.info(
        "calling upstream with key %s and Bearer abcdefghijkl0123 for token=%s",
        "sk-proj-ABCDEF0123456789",
        "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        extra={"text": "my private question", "user": "telegram:42", "fen": 990},
    )
    log.warning("signing with merchant-secret-value-123", extra={"detail": "sign=ABCDEF123456"})
    log.debug("not shown at INFO")
    first, second = lines(captured)
    assert (first["level"], first["logger"], first["user"], first["fen"]) == (
        "INFO",
        "creditbot.test",
        "telegram:42",
        990,
    )
    dump = captured.getvalue()
    for secret in (
        "sk-proj-ABCDEF0123456789",
        "abcdefghijkl0123",
        "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        "merchant-secret-value-123",
        "ABCDEF123456",
        "my private question",
    ):
        assert secret not in dump
    assert "text" not in first
    assert "***" in second["message"]


def test_debug_logs_show_message_text_but_still_no_keys(captured: io.StringIO) -> None:
    logs.setup_logging("DEBUG", stream=captured)
    logging.getLogger("creditbot.test").debug(
        "reply", extra={"text": "what the user asked", "key": "sk-live-0123456789abcdef"}
    )
    [line] = lines(captured)
    assert line["text"] == "what the user asked"
    assert "0123456789abcdef" not in captured.getvalue()


def test_log_level_comes_from_the_environment(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "warning")
    logs.setup_logging(stream=captured)
    logging.getLogger("creditbot.test").info("quiet")
    logging.getLogger("creditbot.test").error("loud")
    assert [line["message"] for line in lines(captured)] == ["loud"]
