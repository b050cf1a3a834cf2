"""Prometheus metrics in a registry of our own (no default process collectors mixed in).

What an operator watches: requests handled, tokens and credits charged per model, top-ups by
source, upstream latency, errors by kind, and holds still open. The numbers are gathered where
they happen without touching the code that does the work:

- `instrument_wallet(wallet)` wraps a wallet: captures count tokens and credits charged (from
  the capture's meta), credits whose key starts with "code:", "wxpay:" or "tgstars:" count as
  top-ups; everything else passes through untouched.
- `instrument_openai(client)` / `instrument_mj(client)` wrap the upstream clients: latency to
  the first answer and errors by kind.
- `count_request(platform, kind)` and `count_error(kind)` for the core to call.
- `middleware` counts HTTP requests of the aiohttp app; `install(app, wallet=...)` mounts
  `GET /metrics` (the open-holds gauge is read from the wallet at scrape time).
- `MetricsServer` serves `/metrics` on a listener of its own, never on the public HTTP port:
  the figures (credits per model, top-ups) are the operator's business. It listens on
  loopback (METRICS_HOST=127.0.0.1, METRICS_PORT=9108) by default; any other address needs
  METRICS_TOKEN, which a scrape then sends as `Authorization: Bearer <token>` (with a token
  set, loopback scrapes need it too). An empty METRICS_PORT turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

TOPUP_PREFIXES = ("code", "wxpay", "tgstars")
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_MAX_CHILDREN = 10_000


class Metrics:
    """Every metric of the bot, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "creditbot_requests",
            "Messages and button presses handled",
            ["platform", "kind"],
            registry=r,
        )
        self.http_requests = Counter(
            "creditbot_http_requests", "HTTP requests served", ["path", "status"], registry=r
        )
        self.tokens = Counter(
            "creditbot_tokens", "Tokens charged", ["model", "direction"], registry=r
        )
        self.credits_charged = Counter(
            "creditbot_credits_charged", "Credits charged (captured)", ["model"], registry=r
        )
        self.topups = Counter("creditbot_topups", "Top-ups received", ["source"], registry=r)
        self.topup_credits = Counter(
            "creditbot_topup_credits", "Credits added by top-ups", ["source"], registry=r
        )
        self.upstream_latency = Histogram(
            "creditbot_upstream_latency_seconds",
            "Time from request to first answer of an upstream",
            ["upstream", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("creditbot_errors", "Errors by kind", ["kind"], registry=r)
        self.open_holds = Gauge(
            "creditbot_open_holds", "Holds not yet captured or voided", registry=r
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: labels() takes a lock and checks its arguments
        on every call, several times per chat message; the child it returns is the same object
        every time (no child is ever removed), so it is looked up once per label set."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= _MAX_CHILDREN:  # label values are bounded; be safe anyway
                self._children.clear()
            found = self._children[key] = metric.labels(*values)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()


def count_request(platform: str, kind: str = "message", metrics: Metrics = METRICS) -> None:
    """The core calls this for every message ("message", "command", "press")."""
    metrics.child(metrics.requests, platform, kind).inc()


def count_error(kind: str, metrics: Metrics = METRICS) -> None:
    """Any error an operator should see counted (upstream kinds, "payment", "storage")."""
    metrics.child(metrics.errors, kind).inc()


# --- the wallet ----------------------------------------------------------------------------


class InstrumentedWallet:
    """A wallet that counts what it charges and what is topped up, and changes nothing else."""

    def __init__(self, wallet: Any, metrics: Metrics) -> None:
        self._wallet = wallet
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wallet, name)

    async def credit(self, account: str, amount: int, key: str, reason: str, **kw: Any) -> Any:
        entry = await self._wallet.credit(account, amount, key, reason, **kw)
        source = key.split(":", 1)[0]
        if source in TOPUP_PREFIXES:
            m = self._metrics
            m.child(m.topups, source).inc()
            m.child(m.topup_credits, source).inc(amount / 1000)
        return entry

    async def capture(self, hold_id: str, amount: int, **kw: Any) -> Any:
        entry = await self._wallet.capture(hold_id, amount, **kw)
        meta = kw.get("meta") or {}
        model = str(meta.get("model") or "unknown")
        m = self._metrics
        m.child(m.credits_charged, model).inc(amount / 1000)
        for field, direction in (("prompt_tokens", "input"), ("completion_tokens", "output")):
            if meta.get(field):
                m.child(m.tokens, model, direction).inc(int(meta[field]))
        return entry


def instrument_wallet(wallet: Any, metrics: Metrics = METRICS) -> Any:
    """Wrap a wallet so top-ups and charges are counted (bot.assemble wraps every wallet)."""
    return InstrumentedWallet(wallet, metrics)


# --- upstreams --------------------------------------------------------------------------------


class InstrumentedOpenAI:
    """Times the first streamed item and counts upstream errors by their `kind`."""

    def __init__(self, client: Any, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def stream_chat(self, model: str, *args: Any, **kw: Any) -> AsyncIterator[Any]:
        started = time.monotonic()
        first = True
        try:
            stream = self._client.stream_chat(model, *args, **kw)
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    if first:
                        m = self._metrics
                        m.child(m.upstream_latency, "openai", model).observe(
                            time.monotonic() - started
                        )
                        first = False
                    yield item
        except Exception as exc:
            m = self._metrics
            m.child(m.errors, str(getattr(exc, "kind", type(exc).__name__))).inc()
            raise


def instrument_openai(client: Any, metrics: Metrics = METRICS) -> Any:
    """Wrap an OpenAIClient (bot.assemble does)."""
    return InstrumentedOpenAI(client, metrics)


class InstrumentedMidjourney:
    """Times submissions to midjourney-proxy and counts their errors."""

    def __init__(self, client: Any, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not name.startswith("submit_") or not callable(attr):
            return attr
        return self._timed(attr)

    def _timed(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kw: Any) -> Any:
            started = time.monotonic()
            try:
                result = await func(*args, **kw)
            except Exception as exc:
                m = self._metrics
                m.child(m.errors, str(getattr(exc, "kind", type(exc).__name__))).inc()
                raise
            m = self._metrics
            m.child(m.upstream_latency, "midjourney", "midjourney").observe(
                time.monotonic() - started
            )
            return result

        return call


def instrument_mj(client: Any, metrics: Metrics = METRICS) -> Any:
    """Wrap a MidjourneyClient (bot.assemble does)."""
    return InstrumentedMidjourney(client, metrics)


# --- HTTP ---------------------------------------------------------------------------------------


def middleware_for(metrics: Metrics = METRICS) -> Any:
    """An aiohttp middleware counting requests by route (not raw path: no unbounded labels)."""

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        info = request.match_info.route.resource
        path = info.canonical if info is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.child(metrics.http_requests, path, str(exc.status)).inc()
            raise
        except Exception:
            metrics.child(metrics.http_requests, path, "500").inc()
            raise
        metrics.child(metrics.http_requests, path, str(response.status)).inc()
        return response

    return count


middleware = middleware_for(METRICS)


def metrics_handler(
    metrics: Metrics = METRICS, wallet: Any = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /metrics; refreshes the open-holds gauge from the wallet first."""

    async def handle(request: web.Request) -> web.Response:
        if wallet is not None:
            try:
                holds = await asyncio.wait_for(wallet.open_holds(), timeout=5)
                metrics.open_holds.set(len(holds))
            except Exception:
                log.warning("metrics: could not count open holds", exc_info=True)
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


def install(
    app: web.Application,
    *,
    wallet: Any = None,
    metrics: Metrics = METRICS,
    path: str = "/metrics",
    count_http: bool = True,
) -> None:
    """Mount GET /metrics (call before the app starts) and count HTTP requests."""
    app.router.add_get(path, metrics_handler(metrics, wallet))
    if count_http:
        app.middlewares.append(middleware_for(metrics))


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches ("" and 0.0.0.0 mean every interface)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class MetricsServer:
    """`GET /metrics` on its own listener (see the module docstring for the rules)."""

    def __init__(
        self, host: str, port: int | None, token: str = "", *, metrics: Metrics = METRICS
    ) -> None:
        """Refuses (ValueError) to expose the figures beyond loopback without a token."""
        self.host, self.port, self._token = host, port, token.strip()
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        if port is not None and not self._token and not is_loopback(host):
            raise ValueError(
                f"METRICS_HOST={host or '(every interface)'} is reachable from other machines: "
                "set METRICS_TOKEN (scrapes send it as a bearer token) or keep "
                "METRICS_HOST=127.0.0.1"
            )

    def app(self, wallet: Any = None) -> web.Application:
        handler = metrics_handler(self._metrics, wallet)
        expected = f"Bearer {self._token}".encode()

        async def scrape(request: web.Request) -> web.Response:
            if self._token:
                given = request.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return web.Response(
                        status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
                    )
            return await handler(request)

        app = web.Application(client_max_size=4096)
        app.router.add_get("/metrics", scrape)
        return app

    async def start(self, wallet: Any = None) -> None:
        """Listen (nothing when the port is off); the bound port is then in `self.port`."""
        if self.port is None:
            return
        runner = web.AppRunner(self.app(wallet), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:  # an ephemeral port (tests): say which
            self.port = runner.addresses[0][1]
        log.info("metrics on %s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
