"""Every setting of the bot, read from the environment and `.env` (pydantic-settings).

One class so an operator finds every knob in one place; each field is documented in
`.env.example`. The billing wing never imports this: the core passes it plain values.

An empty variable (`PRICES_FILE=`, as `.env.example` ships them) is the same as an absent one:
the field keeps its default, so `cp .env.example .env` configures nothing by accident. A
feature whose variables are all absent is off; one configured by halves is refused at start
(`bot.config.check`, one line naming what is missing) rather than failing later, on a user.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Operator configuration. Empty strings mean "not configured"."""

    # env_ignore_empty: `NAME=` in the environment or in .env means "use the default".
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # --- storage and money -------------------------------------------------------------
    wallet_url: str = "sqlite+aiosqlite:///data/creditbot.db"
    prices_file: Path | None = None
    hold_ttl_seconds: int = 600
    sweep_interval_seconds: int = 30
    demo_credits: int = 100
    log_level: str = "INFO"
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    # --- the conversation core ---------------------------------------------------------
    default_model: str = "gpt-3.5-turbo"
    default_language: str = "en"
    admin_ids: list[str] = Field(default_factory=list)
    max_inflight_per_user: int = 1
    max_reply_tokens: int = 1024
    min_reply_tokens: int = 16
    system_prompt: str = "You are a helpful assistant."
    topup_text: str = ""
    dedupe_ttl_seconds: int = 86400

    # --- upstreams -----------------------------------------------------------------------
    openai_api_key: str = ""
    openai_base_url: str = "https://api.openai.com/v1"
    openai_connect_timeout: float = 10.0
    openai_read_timeout: float = 120.0
    openai_max_retries: int = 3
    openai_proxy: str = ""  # http://, https:// or socks5:// proxy for the upstream's requests
    mj_base_url: str = ""
    mj_api_secret: str = ""
    mj_dialect: str = "novicezk"
    mj_task_timeout_seconds: int = 600
    mj_poll_min_seconds: float = 2.0
    mj_poll_max_seconds: float = 15.0
    mj_notify_url: str = ""

    # --- servers -----------------------------------------------------------------------------
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    # /metrics listens apart from the public port; beyond loopback only with a bearer token.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9108  # empty METRICS_PORT=: no metrics listener
    metrics_token: str = ""

    # --- Telegram ------------------------------------------------------------------------------
    telegram_bot_token: str = ""
    telegram_api_base: str = ""
    telegram_proxy: str = ""  # http://, socks4:// or socks5:// proxy for the Bot API
    telegram_webhook_url: str = ""
    telegram_webhook_secret: str = ""
    telegram_webhook_path: str = "/telegram"
    telegram_stars_packs: str = "50:10000,250:55000"

    # --- WeChat --------------------------------------------------------------------------------
    wechat_token: str = ""
    wechat_appid: str = ""
    wechat_secret: str = ""
    wechat_aes_key: str = ""
    wechat_mode: str = "customer_service"
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_path: str = "/wechat"
    wechat_trial_credits: int = 0
    wechat_language: str = "zh"  # language of core messages to WeChat users (zh or en)
    redis_url: str = ""

    # --- WeChat Pay ------------------------------------------------------------------------------
    wechatpay_mchid: str = ""
    wechatpay_api_key: str = ""
    wechatpay_api_v3_key: str = ""
    # v2 signatures, ours and WeChat Pay's (answers and notifications are pinned to it).
    wechatpay_sign_type: Literal["HMAC-SHA256", "MD5"] = "HMAC-SHA256"
    wechatpay_notify_path: str = "/wechatpay/notify"
    wechatpay_notify_url: str = ""
    wechatpay_api_base: str = "https://api.mch.weixin.qq.com"
    wechatpay_platform_cert: Path | None = None
    wechatpay_private_key: Path | None = None
    wechatpay_cert_serial: str = ""
    wechatpay_order_ttl_seconds: int = 1800

    @field_validator("wechatpay_sign_type", mode="before")
    @classmethod
    def _sign_type_or_default(cls, value: object) -> object:
        """An empty WECHATPAY_SIGN_TYPE= is the default; any other value must be exact."""
        return value or "HMAC-SHA256"

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port_is_off(cls, value: object) -> object:
        """METRICS_PORT= (empty) turns the metrics listener off."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def simulated(self) -> bool:
        """No real OpenAI key: the console talks to the built-in simulated upstream."""
        return not self.openai_api_key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
