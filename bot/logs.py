"""Structured logs: one JSON object per line, with no secrets and no user text.

`setup_logging(level)` (default: LOG_LEVEL, else INFO) installs a JSON formatter on the root
logger with a filter that

- masks anything that looks like a key or token (OpenAI `sk-...`, Telegram bot tokens,
  `Bearer ...`, WeChat Pay signatures and `key=...` pairs) and every secret value registered
  with `add_secret` (setup_logging registers the settings' keys when given them);
- drops fields that carry what users wrote (`text`, `prompt`, `content`, `messages`, `reply`)
  unless the level is DEBUG.

Code logs message text only as such an `extra` field, never inside the message string.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FIELDS = frozenset({"text", "prompt", "content", "messages", "reply", "caption"})
SECRET_SETTINGS = (
    "openai_api_key",
    "mj_api_secret",
    "telegram_bot_token",
    "telegram_webhook_secret",
    "wechat_token",
    "wechat_secret",
    "wechat_aes_key",
    "wechatpay_api_key",
    "wechatpay_api_v3_key",
)
MASK = "***"

_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_\-]{30,}"),  # Telegram bot token
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]{8,}"),
    re.compile(
        r"(?i)\b((?:api_?key|secret|token|password|sign|signature|paySign)\s*[=:]\s*)"
        r"[\"']?[^\s\"'&,]{4,}"
    ),
]
# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_secrets: set[str] = set()


def add_secret(value: str | None) -> None:
    """Mask this exact value wherever it would appear in a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """The text with every known secret and key-shaped string masked."""
    for value in sorted(_secrets, key=len, reverse=True):
        text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


class RedactFilter(logging.Filter):
    """Masks secrets in the message and extras; drops user text unless DEBUG is on."""

    def __init__(self, show_text: bool = False) -> None:
        super().__init__()
        self.show_text = show_text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for name in list(vars(record)):
            if name in _STANDARD:
                continue
            if name in TEXT_FIELDS and not self.show_text:
                delattr(record, name)
                continue
            value = getattr(record, name)
            if isinstance(value, str):
                setattr(record, name, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                data[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(level: str | None = None, settings: Any = None, stream: Any = None) -> None:
    """Install JSON logging on the root logger (idempotent: replaces our previous handler)."""
    name = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    if settings is not None:
        for field in SECRET_SETTINGS:
            add_secret(getattr(settings, field, None))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter(show_text=numeric <= logging.DEBUG))
    handler.set_name("creditbot-json")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "creditbot-json"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
