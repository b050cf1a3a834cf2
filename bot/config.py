"""Start-up checks of the settings: a feature is on, off, or refused as configured by halves.

Settings reads what the operator wrote (an empty variable is an absent one). Here each feature
is judged as a whole: none of its variables set means off; its switch set means on, and then
everything it needs must be there; a companion variable set without the switch (a webhook URL
without a bot token, a Midjourney secret without its URL) is a half-configured feature too,
since the operator meant to turn something on. Each problem is one phrase naming the variables;
`check` joins them into the one line `creditbot run` prints before it exits.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from bot.settings import Settings, get_settings

__all__ = ["ConfigError", "check", "load", "problems"]

# setWebhook's secret_token: 1-256 characters of A-Z, a-z, 0-9, _ and -.
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
# A bot token as BotFather gives it: the bot's numeric id, a colon, the secret.
_BOT_TOKEN = re.compile(r"[0-9]+:\S+")
# Proxy URL schemes: what aiogram's session takes (aiohttp-socks), what httpx takes (socksio).
TELEGRAM_PROXY_SCHEMES = ("http", "socks4", "socks5")
OPENAI_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
MJ_DIALECTS = ("novicezk", "trueai")


class ConfigError(ValueError):
    """The settings cannot start the bot; the message is one line naming what to fix."""


def _env(*fields: str) -> str:
    """Field names as their variables ("wechat_appid" -> WECHAT_APPID); phrases stay as written."""
    return ", ".join(f.upper() if f.isidentifier() else f for f in fields)


def _missing(settings: Settings, *fields: str) -> list[str]:
    return [f for f in fields if not str(getattr(settings, f) or "").strip()]


def _needs(settings: Settings, feature: str, given: str, *fields: str) -> str | None:
    """The phrase "Feature: GIVEN is set but A, B are missing", or None if nothing is."""
    missing = _missing(settings, *fields)
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"{feature}: {given.upper()} is set but {_env(*missing)} {verb} missing"


def _first_set(settings: Settings, *fields: str) -> str | None:
    return next((f for f in fields if str(getattr(settings, f) or "").strip()), None)


def _proxy(value: str, name: str, schemes: tuple[str, ...]) -> str | None:
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() in schemes and rest:
        return None
    allowed = ", ".join(f"{s}://" for s in schemes[:-1]) + f" or {schemes[-1]}://"
    return f"{name} must be a URL starting with {allowed} (e.g. socks5://127.0.0.1:1080)"


def _file(path: Path | None, name: str) -> str | None:
    if path is None or path.is_file():
        return None
    return f"{name}={path} is not a readable file"


def telegram(s: Settings) -> list[str]:
    """TELEGRAM_BOT_TOKEN switches Telegram on; a webhook needs its URL and its secret."""
    found: list[str] = []
    token = s.telegram_bot_token.strip()
    if not token:
        given = _first_set(
            s,
            "telegram_webhook_url",
            "telegram_webhook_secret",
            "telegram_api_base",
            "telegram_proxy",
        )
        if given:
            found.append(f"Telegram: {given.upper()} is set but TELEGRAM_BOT_TOKEN is missing")
        return found
    if not _BOT_TOKEN.fullmatch(token):
        found.append("Telegram: TELEGRAM_BOT_TOKEN does not look like a bot token (123456:ABC...)")
    url, secret = s.telegram_webhook_url.strip(), s.telegram_webhook_secret.strip()
    if url and not secret:
        found.append(
            "Telegram: TELEGRAM_WEBHOOK_URL is set but TELEGRAM_WEBHOOK_SECRET is missing "
            "(a webhook without a secret would accept forged updates)"
        )
    elif secret and not url:
        found.append(
            "Telegram: TELEGRAM_WEBHOOK_SECRET is set but TELEGRAM_WEBHOOK_URL is missing "
            "(set both for webhook mode, neither for long polling)"
        )
    elif secret and not _WEBHOOK_SECRET.fullmatch(secret):
        found.append(
            "Telegram: TELEGRAM_WEBHOOK_SECRET may only have 1-256 of A-Z, a-z, 0-9, _ and -"
        )
    if s.telegram_proxy.strip():
        bad = _proxy(s.telegram_proxy.strip(), "TELEGRAM_PROXY", TELEGRAM_PROXY_SCHEMES)
        if bad:
            found.append(f"Telegram: {bad}")
    return found


def wechat(s: Settings) -> list[str]:
    """WECHAT_TOKEN switches the Official Account on; it needs the app id and its secret."""
    if not s.wechat_token.strip():
        # WECHAT_APPID alone is WeChat Pay's app id; the secret and AES key are this front end's.
        given = _first_set(s, "wechat_secret", "wechat_aes_key")
        return [f"WeChat: {given.upper()} is set but WECHAT_TOKEN is missing"] if given else []
    found = [p for p in [_needs(s, "WeChat", "wechat_token", "wechat_appid", "wechat_secret")] if p]
    aes = s.wechat_aes_key.strip()
    if aes and len(aes) != 43:
        found.append("WeChat: WECHAT_AES_KEY must be the 43 characters of the EncodingAESKey")
    return found


def wechatpay(s: Settings) -> list[str]:
    """WeChat Pay is on as soon as any of its keys is set; v2 needs the API key, v3 its four."""
    given = _first_set(
        s,
        "wechatpay_mchid",
        "wechatpay_api_key",
        "wechatpay_api_v3_key",
        "wechatpay_private_key",
        "wechatpay_cert_serial",
        "wechatpay_platform_cert",
        "wechatpay_notify_url",
    )
    if given is None:
        return []
    found: list[str] = []
    missing = _missing(s, "wechatpay_mchid", "wechat_appid", "wechatpay_notify_url")
    v2_key, v3_key = s.wechatpay_api_key.strip(), s.wechatpay_api_v3_key.strip()
    # v3 is meant when its merchant key or serial is given, or its key alone.
    if _first_set(s, "wechatpay_private_key", "wechatpay_cert_serial") or (v3_key and not v2_key):
        v3_needs = ("wechatpay_api_v3_key", "wechatpay_private_key", "wechatpay_cert_serial")
        missing += _missing(s, *v3_needs, "wechatpay_platform_cert")
    elif not v2_key:
        missing.append("WECHATPAY_API_KEY (v2) or WECHATPAY_API_V3_KEY (v3)")
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        found.append(f"WeChat Pay: {given.upper()} is set but {_env(*missing)} {verb} missing")
    if v3_key and len(v3_key.encode()) != 32:
        found.append("WeChat Pay: WECHATPAY_API_V3_KEY must be the 32-character APIv3 key")
    for path, name in (
        (s.wechatpay_platform_cert, "WECHATPAY_PLATFORM_CERT"),
        (s.wechatpay_private_key, "WECHATPAY_PRIVATE_KEY"),
    ):
        bad = _file(path, name)
        if bad:
            found.append(f"WeChat Pay: {bad}")
    return found


def midjourney(s: Settings) -> list[str]:
    """MJ_BASE_URL switches images on (the proxy's secret is optional, as the proxy's is)."""
    if not s.mj_base_url.strip():
        given = _first_set(s, "mj_api_secret", "mj_notify_url")
        return [f"Midjourney: {given.upper()} is set but MJ_BASE_URL is missing"] if given else []
    if s.mj_dialect not in MJ_DIALECTS:
        return [f"Midjourney: MJ_DIALECT must be {' or '.join(MJ_DIALECTS)}"]
    return []


def upstream(s: Settings) -> list[str]:
    """The OpenAI client's proxy, and an operator's price file."""
    found: list[str] = []
    if s.openai_proxy.strip():
        bad = _proxy(s.openai_proxy.strip(), "OPENAI_PROXY", OPENAI_PROXY_SCHEMES)
        if bad:
            found.append(f"Upstream: {bad}")
    bad = _file(s.prices_file, "PRICES_FILE")
    if bad:
        found.append(bad)
    return found


def problems(settings: Settings) -> list[str]:
    """Every half-configured or malformed feature, one phrase each (empty: good to start)."""
    return [
        *upstream(settings),
        *telegram(settings),
        *wechat(settings),
        *wechatpay(settings),
        *midjourney(settings),
    ]


def check(settings: Settings) -> None:
    """Raise ConfigError (one line) when any feature is configured by halves."""
    found = problems(settings)
    if found:
        raise ConfigError("; ".join(found))


def load() -> Settings:
    """The process's settings, checked; a value that does not parse is a one-line ConfigError
    too (pydantic's report names the variable), never a traceback."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # a JSON field (ADMIN_IDS) that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = field.group(1).upper() if field else "a setting"
        raise ConfigError(f'{name} is not valid JSON (e.g. ADMIN_IDS=["telegram:12345"])') from None
    check(settings)
    return settings


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = "_".join(str(p) for p in error.get("loc", ())).upper() or "settings"
        value = error.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
        parts.append(f"{name}: {error.get('msg', 'invalid')}{shown}")
    return "; ".join(parts)
