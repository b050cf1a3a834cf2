"""WeChat Official Account front end (wechatpy): callbacks on the bot's aiohttp server."""

from __future__ import annotations

from aiohttp import web

from adapters.wechat.frontend import PassiveTiming, WeChatFrontEnd
from bot.api import CoreAPI
from bot.settings import Settings

__all__ = ["PassiveTiming", "WeChatFrontEnd", "install"]


def install(core: CoreAPI, settings: Settings, app: web.Application) -> WeChatFrontEnd | None:
    """Serve WECHAT_PATH on `app` for the core; None when WECHAT_TOKEN is not set."""
    if not settings.wechat_token:
        return None
    front = WeChatFrontEnd(core, settings, app=app)
    front.check_on_start = True
    front.endpoint.add_routes(app, settings.wechat_path)
    return front
