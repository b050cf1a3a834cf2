"""The one HTTP server of `creditbot run`: health, Midjourney's notifyHook, and the webhooks.

Front ends that need HTTP (Telegram webhooks, WeChat, WeChat Pay) mount their routes on this
app through their `install(core, settings, app)`; each returns None when not configured, so an
operator turns a platform on by setting its variables and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from typing import Protocol

from aiohttp import web

from bot.core import Core
from bot.metrics import MetricsServer
from bot.settings import Settings

log = logging.getLogger(__name__)

FRONT_ENDS = ("adapters.telegram", "adapters.wechat", "adapters.wechatpay")
CORE_KEY = web.AppKey("core", Core)


class FrontEnd(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def mj_notify(request: web.Request) -> web.Response:
    """notifyHook: midjourney-proxy says a task changed. Only a trigger to re-fetch it now.

    The body is unsigned, so nothing in it is trusted: we read the task id and ask the proxy.
    """
    core = request.app[CORE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"ok": False}, status=400)
    task_id = str(body.get("id") or "") if isinstance(body, dict) else ""
    tracked = bool(task_id) and core.mj_notify(task_id)
    return web.json_response({"ok": True, "tracked": tracked})


def build_app(core: Core) -> web.Application:
    """/healthz and /mj/notify (front ends add their own routes)."""
    app = web.Application(client_max_size=1024 * 1024)
    app[CORE_KEY] = core
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/mj/notify", mj_notify)
    return app


def install_front_ends(core: Core, settings: Settings, app: web.Application) -> list[FrontEnd]:
    """Call each front end's install(); a missing or unconfigured one is skipped."""
    fronts: list[FrontEnd] = []
    for name in FRONT_ENDS:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            log.info("front end %s not available: %s", name, exc)
            continue
        install = getattr(module, "install", None)
        if install is None:
            continue
        front = install(core, settings, app)
        if front is not None:
            log.info("front end %s configured", name)
            fronts.append(front)
    with contextlib.suppress(ImportError):
        from bot import metrics

        app.middlewares.append(metrics.middleware)  # /metrics itself: MetricsServer, not here
    return fronts


def configured(settings: Settings) -> bool:
    """True when at least one chat platform is configured (else `run` starts the console)."""
    return bool(settings.telegram_bot_token.strip() or settings.wechat_token.strip())


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> int:
    """Run the core, the HTTP server and every configured front end until SIGINT/SIGTERM."""
    if settings.simulated:
        log.warning(
            "OPENAI_API_KEY is not set: chat requests to %s will be refused upstream "
            "(users are not charged). Set it, or point OPENAI_BASE_URL at `creditbot simulate`.",
            settings.openai_base_url,
        )
    # Before anything opens: a metrics listener reachable from other machines needs a token.
    metrics = MetricsServer(settings.metrics_host, settings.metrics_port, settings.metrics_token)
    core = await Core.create(settings)
    app = build_app(core)
    fronts = install_front_ends(core, settings, app)
    await core.start()  # after the front ends set their sinks: resumed results reach them
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
        log.info("HTTP server on %s:%d", settings.http_host, settings.http_port)
        await metrics.start(core.wallet)
        for front in fronts:
            await front.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for front in reversed(fronts):
            try:
                await front.stop()
            except Exception:
                log.exception("stopping a front end failed")
        await metrics.stop()
        await runner.cleanup()
        await core.close()
    return 0
