"""`.env.example` works as a `.env`; a feature set up by halves is refused with one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot import config
from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / ".env.example"
V3_KEY = "k" * 32


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any setting of the bot, plus `extra`."""
    fields = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
    env.update(extra)
    return env


@pytest.fixture
def operator_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with `cp .env.example .env` done, as the current directory."""
    shutil.copy(EXAMPLE, tmp_path / ".env")
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def creditbot(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_every_setting_is_in_env_example() -> None:
    named = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", EXAMPLE.read_text(), re.M))
    assert {name.upper() for name in Settings.model_fields} == named


def test_env_example_as_env_configures_nothing_by_accident(operator_dir: Path) -> None:
    settings = Settings()
    defaults = Settings(_env_file=None)
    assert settings.prices_file is None
    assert settings.wechatpay_platform_cert is None
    assert settings.wechatpay_private_key is None
    assert settings.admin_ids == []
    assert settings.telegram_proxy == "" and settings.openai_proxy == ""
    # Every value the example ships is the default (empty lines fall back to it).
    assert settings.model_dump() == defaults.model_dump()
    assert config.problems(settings) == []


def test_empty_variables_in_the_environment_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICES_FILE", "")
    monkeypatch.setenv("HTTP_PORT", "")
    monkeypatch.setenv("WECHATPAY_PRIVATE_KEY", "")
    monkeypatch.setenv("SYSTEM_PROMPT", "")
    settings = Settings(_env_file=None)
    assert settings.prices_file is None and settings.wechatpay_private_key is None
    assert settings.http_port == 8080
    assert settings.system_prompt == "You are a helpful assistant."


def test_prices_with_env_example_as_env(operator_dir: Path) -> None:
    done = creditbot(operator_dir, "prices")
    assert done.returncode == 0, done.stderr
    assert "gpt-3.5-turbo" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_half_configured_feature_stops_run_with_one_line(operator_dir: Path) -> None:
    done = creditbot(operator_dir, "run", WECHAT_TOKEN="token")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "creditbot: configuration error: WeChat: WECHAT_TOKEN is set but WECHAT_APPID, "
        "WECHAT_SECRET are missing"
    ]
    assert not (operator_dir / "data").exists()  # refused before anything was opened


def test_a_value_that_does_not_parse_is_one_line_too(operator_dir: Path) -> None:
    done = creditbot(operator_dir, "run", HTTP_PORT="eighty")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("creditbot: configuration error: HTTP_PORT: ")
    done = creditbot(operator_dir, "chat", ADMIN_IDS="telegram:1")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "ADMIN_IDS is not valid JSON" in line


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


WECHAT = {"wechat_token": "t", "wechat_appid": "wxapp", "wechat_secret": "s"}
PAY_V2 = {
    "wechatpay_mchid": "1900000001",
    "wechat_appid": "wxapp",
    "wechatpay_api_key": "v2key",
    "wechatpay_notify_url": "https://bot.example.com/wechatpay/notify",
}


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Any]:
    cert, key = tmp_path / "platform.pem", tmp_path / "apiclient_key.pem"
    cert.write_text("cert")
    key.write_text("key")
    return {
        "wechatpay_platform_cert": cert,
        "wechatpay_private_key": key,
        "wechatpay_cert_serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "wechatpay_api_v3_key": V3_KEY,
    }


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"telegram_bot_token": "1:a", "telegram_webhook_url": "https://x.example/tg"},
            "Telegram: TELEGRAM_WEBHOOK_URL is set but TELEGRAM_WEBHOOK_SECRET is missing",
        ),
        (
            {"telegram_bot_token": "1:a", "telegram_webhook_secret": "s"},
            "Telegram: TELEGRAM_WEBHOOK_SECRET is set but TELEGRAM_WEBHOOK_URL is missing",
        ),
        (
            {
                "telegram_bot_token": "1:a",
                "telegram_webhook_url": "https://x.example/tg",
                "telegram_webhook_secret": "not allowed!",
            },
            "Telegram: TELEGRAM_WEBHOOK_SECRET may only have",
        ),
        (
            {"telegram_webhook_url": "https://x.example/tg", "telegram_webhook_secret": "s"},
            "Telegram: TELEGRAM_WEBHOOK_URL is set but TELEGRAM_BOT_TOKEN is missing",
        ),
        (
            {"telegram_proxy": "socks5://127.0.0.1:1080"},
            "Telegram: TELEGRAM_PROXY is set but TELEGRAM_BOT_TOKEN is missing",
        ),
        (
            {"telegram_bot_token": "not-a-token"},
            "Telegram: TELEGRAM_BOT_TOKEN does not look like a bot token",
        ),
        (
            {"telegram_bot_token": "1:a", "telegram_proxy": "127.0.0.1:1080"},
            "Telegram: TELEGRAM_PROXY must be a URL starting with http://, socks4:// or socks5://",
        ),
        (
            {"wechat_token": "t"},
            "WeChat: WECHAT_TOKEN is set but WECHAT_APPID, WECHAT_SECRET are missing",
        ),
        (
            {"wechat_token": "t", "wechat_appid": "wxapp"},
            "WeChat: WECHAT_TOKEN is set but WECHAT_SECRET is missing",
        ),
        ({"wechat_secret": "s"}, "WeChat: WECHAT_SECRET is set but WECHAT_TOKEN is missing"),
        ({**WECHAT, "wechat_aes_key": "short"}, "WeChat: WECHAT_AES_KEY must be the 43"),
        (
            {"wechatpay_mchid": "1900000001"},
            "WeChat Pay: WECHATPAY_MCHID is set but WECHAT_APPID, WECHATPAY_NOTIFY_URL, "
            "WECHATPAY_API_KEY (v2) or WECHATPAY_API_V3_KEY (v3) are missing",
        ),
        (
            {**PAY_V2, "wechatpay_notify_url": ""},
            "WeChat Pay: WECHATPAY_MCHID is set but WECHATPAY_NOTIFY_URL is missing",
        ),
        (
            {**PAY_V2, "wechatpay_api_key": "", "wechatpay_api_v3_key": V3_KEY},
            "WeChat Pay: WECHATPAY_MCHID is set but WECHATPAY_PRIVATE_KEY, "
            "WECHATPAY_CERT_SERIAL, WECHATPAY_PLATFORM_CERT are missing",
        ),
        (
            {**PAY_V2, "wechatpay_cert_serial": "ABC"},
            "WeChat Pay: WECHATPAY_MCHID is set but WECHATPAY_API_V3_KEY, "
            "WECHATPAY_PRIVATE_KEY, WECHATPAY_PLATFORM_CERT are missing",
        ),
        (
            {**PAY_V2, "wechatpay_api_v3_key": "short"},
            "WeChat Pay: WECHATPAY_API_V3_KEY must be the 32-character APIv3 key",
        ),
        (
            {**PAY_V2, "wechatpay_platform_cert": Path("/nonexistent/platform.pem")},
            "WeChat Pay: WECHATPAY_PLATFORM_CERT=/nonexistent/platform.pem is not a readable file",
        ),
        ({"mj_api_secret": "s"}, "Midjourney: MJ_API_SECRET is set but MJ_BASE_URL is missing"),
        (
            {"mj_notify_url": "https://bot.example.com/mj/notify"},
            "Midjourney: MJ_NOTIFY_URL is set but MJ_BASE_URL is missing",
        ),
        (
            {"mj_base_url": "http://mj:8080", "mj_dialect": "other"},
            "Midjourney: MJ_DIALECT must be novicezk or trueai",
        ),
        (
            {"openai_proxy": "proxy.example.com:3128"},
            "Upstream: OPENAI_PROXY must be a URL starting with http://, https://, socks5://",
        ),
        ({"prices_file": Path("/nonexistent/prices.toml")}, "PRICES_FILE=/nonexistent/"),
    ],
)
def test_each_half_configured_feature_is_named(values: dict[str, Any], expected: str) -> None:
    settings = make(**values)
    [problem] = config.problems(settings)
    assert problem.startswith(expected), problem
    with pytest.raises(config.ConfigError) as raised:
        config.check(settings)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"telegram_bot_token": "123456:ABC-def"},
        {
            "telegram_bot_token": "123456:ABC-def",
            "telegram_webhook_url": "https://x.example/tg",
            "telegram_webhook_secret": "s3cret_-",
            "telegram_proxy": "socks5://user:pw@127.0.0.1:1080",
        },
        WECHAT,
        {**WECHAT, "wechat_aes_key": "a" * 43},
        {"wechat_appid": "wxapp"},  # WeChat Pay's app id alone turns nothing on
        PAY_V2,
        {"mj_base_url": "http://mj:8080"},  # midjourney-proxy without a secret is allowed
        {"openai_proxy": "http://proxy.example.com:3128"},
    ],
)
def test_complete_features_start(values: dict[str, Any]) -> None:
    assert config.problems(make(**values)) == []


def test_wechat_pay_v3_complete(pem_files: dict[str, Any]) -> None:
    assert config.problems(make(**{**PAY_V2, "wechatpay_api_key": "", **pem_files})) == []
    assert config.problems(make(**{**PAY_V2, **pem_files})) == []  # v2 and v3 both


def test_several_problems_are_one_line() -> None:
    with pytest.raises(config.ConfigError) as raised:
        config.check(make(wechat_token="t", mj_api_secret="s"))
    message = str(raised.value)
    assert "WECHAT_APPID" in message and "MJ_BASE_URL" in message and "\n" not in message
