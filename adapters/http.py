"""The one HTTP server of `creditbot run`: health, Midjourney's notifyHook, and the webhooks.

Front ends that need HTTP (Telegram webhooks, WeChat, WeChat Pay) mount their routes on this
app through their `install(core, settings, app)`; each returns None when not configured, so an
operator turns a platform on by setting its variables and nothing else. Every front end is
part of the install: one that fails to import is a broken install, and `serve` refuses to
start (exit status 1, naming the front end and the error) before it opens anything.

`GET /healthz` answers `{"status": "ok"|"down", "checks": {name: {"status": ..., "detail": ...}}}`
with 200, or 503 while any check is down: each front end with a `status` (telegram, wechat),
the wallet and the store (one cheap read each), the upstream and Midjourney (how their last
request went). See bot/health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from types import ModuleType
from typing import Protocol

from aiohttp import web

from bot import metrics
from bot.api import CoreAPI
from bot.assemble import assemble
from bot.health import Health, Status, read_probe
from bot.metrics import MetricsServer
from bot.settings import Settings

log = logging.getLogger(__name__)

FRONT_ENDS = ("adapters.telegram", "adapters.wechat", "adapters.wechat.wechatpay")
CORE_KEY = web.AppKey("core", CoreAPI)
HEALTH_KEY = web.AppKey("health", Health)
PROBE_ACCOUNT = "healthz:probe"  # read, never written: an account that has nothing


class FrontEnd(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def healthz(request: web.Request) -> web.Response:
    """Every part's state; 503 while any is down (no balances, no figures: it is public)."""
    healthy, checks = await request.app[HEALTH_KEY].report()
    return web.json_response(
        {"status": "ok" if healthy else "down", "checks": checks}, status=200 if healthy else 503
    )


def build_health(core: CoreAPI) -> Health:
    """The wallet, the store, and the upstreams' own statuses (front ends join in `serve`)."""
    health = Health()
    health.add("wallet", read_probe(lambda: core.wallet.balance(PROBE_ACCOUNT)))
    health.add("store", read_probe(lambda: core.kv.get(PROBE_ACCOUNT)))
    for name, status in core.upstream_statuses().items():
        health.add(name, status)
    return health


def watch_front_ends(health: Health, fronts: list[FrontEnd]) -> None:
    """Add each front end that says whether its platform is reachable (its `status`)."""
    for front in fronts:
        status = getattr(front, "status", None)
        if isinstance(status, Status):
            health.add(status.name, status)


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


def build_app(core: CoreAPI) -> web.Application:
    """/healthz and /mj/notify (front ends add their own routes)."""
    app = web.Application(client_max_size=1024 * 1024)
    app[CORE_KEY] = core
    app[HEALTH_KEY] = build_health(core)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/mj/notify", mj_notify)
    return app


class FrontEndError(RuntimeError):
    """A front end could not be imported: the install is broken, `creditbot run` stops."""


def import_front_ends(names: tuple[str, ...] = FRONT_ENDS) -> list[ModuleType]:
    """Every front end's module; FrontEndError naming the first that fails to import."""
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:
            raise FrontEndError(f"front end {name} failed to import: {exc!r}") from exc
    return modules


def install_front_ends(
    core: CoreAPI,
    settings: Settings,
    app: web.Application,
    modules: list[ModuleType] | None = None,
) -> list[FrontEnd]:
    """Call each front end's install(); an unconfigured one (install() is None) is skipped.

    A front end imports its platform library when it is configured (Telegram: aiogram's
    dispatcher): failing that import is a FrontEndError too.
    """
    fronts: list[FrontEnd] = []
    for module in import_front_ends() if modules is None else modules:
        try:
            front = module.install(core, settings, app)
        except ImportError as exc:
            raise FrontEndError(f"front end {module.__name__} failed to import: {exc!r}") from exc
        if front is not None:
            log.info("front end %s configured", module.__name__)
            fronts.append(front)
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
    try:
        modules = import_front_ends()
    except FrontEndError as exc:
        log.error("creditbot run: %s", exc)
        return 1
    # Before anything opens: a metrics listener reachable from other machines needs a token.
    metrics_server = MetricsServer(
        settings.metrics_host, settings.metrics_port, settings.metrics_token
    )
    core = await assemble(settings)
    app = build_app(core)
    try:
        fronts = install_front_ends(core, settings, app, modules)
    except FrontEndError as exc:
        log.error("creditbot run: %s", exc)
        await core.close()
        return 1
    watch_front_ends(app[HEALTH_KEY], fronts)
    await core.start()  # after the front ends set their sinks: resumed results reach them
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
        log.info("HTTP server on %s:%d", settings.http_host, settings.http_port)
        await metrics_server.start(core.wallet)
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
        await metrics_server.stop()
        await runner.cleanup()
        await core.close()
    return 0
