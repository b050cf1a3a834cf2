"""/metrics (credits per model, top-ups) is never on the public HTTP port: it has a listener of
its own, on loopback by default, and anywhere else only behind a bearer token. /healthz on the
public port says nothing but that the bot is up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from adapters.http import serve
from bot.metrics import MetricsServer, is_loopback
from bot.settings import Settings
from fakes.services import free_port

TOKEN = "scrape-s3cret"


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "", "::", "10.0.0.5", "metrics.internal"):
        assert not is_loopback(host), host


def test_metrics_beyond_loopback_need_a_token() -> None:
    for host in ("0.0.0.0", "", "::", "192.168.1.2"):
        with pytest.raises(ValueError, match="METRICS_TOKEN"):
            MetricsServer(host, 9108, "")
        MetricsServer(host, 9108, TOKEN)  # with a token: fine
    MetricsServer("127.0.0.1", 9108, "")  # the default: loopback, no token needed
    MetricsServer("0.0.0.0", None, "")  # off: nothing is exposed


def test_settings_defaults_and_an_empty_port_turn_metrics_off() -> None:
    s = Settings(_env_file=None)
    assert (s.metrics_host, s.metrics_port, s.metrics_token) == ("127.0.0.1", 9108, "")
    off = Settings(_env_file=None, metrics_port="")  # type: ignore[arg-type]
    assert off.metrics_port is None


@asynccontextmanager
async def running(sqlite_url: str, **overrides: Any) -> AsyncIterator[tuple[str, Settings]]:
    """`creditbot run`'s server (adapters.http.serve) until the block ends."""
    values: dict[str, Any] = {
        "wallet_url": sqlite_url,
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        "metrics_port": free_port(),
        "sweep_interval_seconds": 3600,
    }
    values.update(overrides)
    settings = Settings(_env_file=None, **values)
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiting.cancel()
        task.result()  # raises what stopped it
    assert ready.is_set(), "the server did not start"
    try:
        yield f"http://127.0.0.1:{settings.http_port}", settings
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_metrics_are_on_their_own_loopback_port_only(sqlite_url: str) -> None:
    async with running(sqlite_url) as (public, settings), httpx.AsyncClient() as http:
        health = await http.get(public + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert "creditbot_" not in health.text  # no business figures on the public port
        assert (await http.get(public + "/metrics")).status_code == 404
        scrape = await http.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert scrape.status_code == 200 and "creditbot_open_holds" in scrape.text
        assert "creditbot_http_requests" in scrape.text  # the public port is still counted


async def test_a_token_is_required_when_set(sqlite_url: str) -> None:
    async with (
        running(sqlite_url, metrics_host="0.0.0.0", metrics_token=TOKEN) as (public, s),
        httpx.AsyncClient() as http,
    ):
        url = f"http://127.0.0.1:{s.metrics_port}/metrics"
        bare = await http.get(url)
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
        assert "creditbot" not in bare.text
        wrong = await http.get(url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "creditbot_open_holds" in ok.text
        assert (await http.get(public + "/metrics")).status_code == 404


async def test_exposed_metrics_without_a_token_stop_the_start(sqlite_url: str) -> None:
    settings = Settings(
        _env_file=None, wallet_url=sqlite_url, http_port=free_port(), metrics_host="0.0.0.0"
    )
    with pytest.raises(ValueError, match="METRICS_TOKEN"):
        await serve(settings)


async def test_an_empty_port_serves_no_metrics(sqlite_url: str) -> None:
    port = free_port()
    async with (
        running(sqlite_url, metrics_port=None) as (public, _),
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(public + "/healthz")).status_code == 200
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/metrics")
