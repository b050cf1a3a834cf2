"""TELEGRAM_PROXY and OPENAI_PROXY: requests really go through the proxy.

The proxy is a small loopback HTTP proxy written here: CONNECT tunnels (what aiohttp-socks
does for an http:// proxy) and absolute-URI forwarding (what httpx does for an http:// target).
It records each request line, so a test sees that the proxy was used and how.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiogram.client.session.aiohttp import AiohttpSession
from aiohttp_socks import ProxyConnector

from adapters.telegram.frontend import make_bot, make_session
from bot.providers.openai import Delta, OpenAIClient, Usage
from bot.settings import Settings
from fakes.openai import Stream, fake_openai
from fakes.telegram_api import BOT_USERNAME, TOKEN, FakeBotAPI


class LoopbackProxy:
    """An HTTP proxy on 127.0.0.1; `lines` holds the request line of every request."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> LoopbackProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
            self.lines.append(line)
            method, target, version = line.split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # the CONNECT request's own headers
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:  # absolute URI: http://host:port/path -> "METHOD /path" to host:port
                assert target.startswith("http://"), target
                authority, _, path = target[len("http://") :].partition("/")
                host, _, port = authority.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                up_writer.write(f"{method} /{path} {version}\r\n".encode("latin-1"))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[LoopbackProxy]:
    server = await LoopbackProxy().start()
    yield server
    await server.close()


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeBotAPI]:
    api = await FakeBotAPI().start()
    yield api
    await api.close()


async def test_openai_requests_go_through_openai_proxy(proxy: LoopbackProxy) -> None:
    async with fake_openai(Stream(["through ", "the proxy"])) as fake:
        settings = Settings(
            _env_file=None,
            openai_base_url=f"{fake.url}/v1",
            openai_api_key="sk-test",
            openai_proxy=proxy.url,
            openai_max_retries=0,
        )
        async with OpenAIClient.from_settings(settings) as client:
            items = [i async for i in client.stream_chat("gpt-3.5-turbo", [], 10)]
    assert "".join(i.text for i in items if isinstance(i, Delta)) == "through the proxy"
    assert isinstance(items[-1], Usage)
    # httpx sends a plain-http request to the proxy with the absolute URI of the target.
    assert proxy.lines == [f"POST {fake.url}/v1/chat/completions HTTP/1.1"]
    assert len(fake.requests) == 1


async def test_the_cores_upstream_client_uses_openai_proxy(
    proxy: LoopbackProxy, sqlite_url: str
) -> None:
    from bot.assemble import assemble

    async with fake_openai(Stream(["hi"])) as fake:
        settings = Settings(
            _env_file=None,
            wallet_url=sqlite_url,
            openai_base_url=f"{fake.url}/v1",
            openai_api_key="sk-test",
            openai_proxy=proxy.url,
        )
        core = await assemble(settings)
        try:
            stream = core.services.openai.stream_chat("gpt-3.5-turbo", [], 10)
            items = [i async for i in stream]
            assert items[0] == Delta("hi")
        finally:
            await core.close()
    assert proxy.lines == [f"POST {fake.url}/v1/chat/completions HTTP/1.1"]


async def test_without_openai_proxy_the_upstream_is_reached_directly(
    proxy: LoopbackProxy,
) -> None:
    async with fake_openai(Stream()) as fake:
        async with OpenAIClient(f"{fake.url}/v1", "sk-test") as client:
            [_ async for _ in client.stream_chat("gpt-3.5-turbo", [], 10)]
    assert proxy.lines == [] and len(fake.requests) == 1


def test_the_telegram_session_is_built_with_telegram_proxy() -> None:
    settings = Settings(
        _env_file=None,
        telegram_bot_token=TOKEN,
        telegram_proxy="socks5://user:secret@127.0.0.1:1080",
    )
    session = make_session(settings)
    assert isinstance(session, AiohttpSession)
    assert session.proxy == "socks5://user:secret@127.0.0.1:1080"
    assert session._connector_type is ProxyConnector  # aiohttp-socks carries the requests
    assert make_session(Settings(_env_file=None, telegram_bot_token=TOKEN)).proxy is None


async def test_telegram_calls_go_through_telegram_proxy(
    proxy: LoopbackProxy, fake_api: FakeBotAPI
) -> None:
    settings = Settings(
        _env_file=None,
        telegram_bot_token=TOKEN,
        telegram_api_base=fake_api.url,
        telegram_proxy=proxy.url,
    )
    bot = make_bot(settings)
    try:
        me = await bot.get_me()
    finally:
        await bot.session.close()
    assert me.username == BOT_USERNAME
    host = fake_api.url.removeprefix("http://")
    assert proxy.lines == [f"CONNECT {host} HTTP/1.1"]  # aiohttp-socks tunnels through it
    assert [c.method for c in fake_api.calls] == ["getMe"]


async def test_a_socks5_openai_proxy_is_supported() -> None:
    """httpx needs socksio for socks5:// (the httpx[socks] dependency)."""
    async with OpenAIClient("https://api.openai.com/v1", "sk", proxy="socks5://127.0.0.1:9"):
        pass
