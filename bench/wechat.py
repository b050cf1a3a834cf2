"""WeChat front end throughput: callbacks per second in safe mode (AES), on loopback.

The bot runs for real in this process: the aiohttp endpoint checks both signatures, screens
and decrypts the XML, dedupes the MsgId in the Store, hands the message to the core (SQLite
wallet, simulated upstream at zero latency) and encrypts its passive reply. The load generator
is a separate process (an aiohttp client loop) playing WeChat's servers; it builds and
encrypts every callback before the clock starts, so it measures the bot, not itself.

Modes:
- `passive`: a callback is done when its encrypted answer (a 20-token reply, held and
  captured in the wallet) comes back in the HTTP response;
- `customer_service`: the callback is acknowledged at once ("success") and the answer goes
  out through the (fake) customer-service API; callbacks/s is the acknowledgement rate and
  answers/s the rate at which answers reached the fake WeChat API.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from bot import runtime  # the product's event loop (uvloop where installed)

TOKEN = "bench-token"
APPID = "wxbench"
TEXT = "Say something [[tokens:20]]"


# --- the load generator (a separate process) -----------------------------------------------


def _build(url: str, aes_key: str, count: int, users: int, seed: int) -> list[tuple[dict, str]]:
    """Signed, encrypted callbacks exactly as WeChat sends them (built before timing)."""
    import xmltodict
    from wechatpy.crypto import WeChatCrypto

    from fakes.wechat_client import sign, text_xml

    crypto = WeChatCrypto(TOKEN, aes_key, APPID)
    out = []
    for i in range(count):
        timestamp, nonce = str(int(time.time())), f"n{seed}-{i}"
        xml = text_xml(f"o-bench-{i % users}", TEXT, seed * 10_000_000 + i)
        env = xmltodict.parse(crypto.encrypt_message(xml, nonce, timestamp))["xml"]
        query = {
            "signature": sign(TOKEN, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "encrypt_type": "aes",
            "msg_signature": env["MsgSignature"],
        }
        body = (
            "<xml><ToUserName><![CDATA[gh_bot]]></ToUserName>"
            f"<Encrypt><![CDATA[{env['Encrypt']}]]></Encrypt></xml>"
        )
        out.append((query, body))
    return out


async def _load(url: str, requests: list[tuple[dict, str]], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    queue = iter(requests)

    async with ClientSession(
        connector=TCPConnector(limit=concurrency), timeout=ClientTimeout(total=30)
    ) as session:

        async def worker() -> None:
            nonlocal errors
            for query, body in queue:
                t0 = time.perf_counter()
                async with session.post(url, params=query, data=body) as resp:
                    text = await resp.text()
                    ok = resp.status == 200 and (text == "success" or "<Encrypt>" in text)
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "latencies": latencies, "errors": errors}


def _generator(url: str, aes_key: str, args: dict[str, Any], conn: Any) -> None:
    requests = _build(url, aes_key, args["count"], args["users"], args["seed"])
    conn.send("ready")
    conn.recv()  # go
    conn.send(runtime.run(_load(url, requests, args["concurrency"])))


# --- the bot (this process) ------------------------------------------------------------------


async def _all_sent(fake: Any, total: int, seconds: float) -> None:
    """Wait until the fake WeChat API has received `total` customer-service messages."""
    deadline = time.perf_counter() + seconds
    while len(fake.sent) < total and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


class EchoCore:
    """A core that answers at once without a model or a wallet: what is left is the front
    end's own work (signatures, AES both ways, XML screening, MsgId dedupe in the Store)."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    async def handle(self, msg: Any, *, stop: Any = None) -> AsyncIterator[Any]:
        from bot.events import FinalText

        yield FinalText(f"echo: {msg.text}")

    def set_sink(self, platform: str, sink: Any) -> None:
        pass

    async def grant_trial(self, platform: str, user_id: str, amount_milli: int) -> bool:
        return False

    async def account_of(self, platform: str, user_id: str) -> str:
        return f"{platform}:{user_id}"

    async def close(self) -> None:
        await self.kv.close()


async def run(
    mode: str,
    count: int,
    concurrency: int,
    users: int,
    seed: int,
    wallet_url: str = "",
    core_kind: str = "real",
) -> dict[str, Any]:
    from adapters.wechat import PassiveTiming, install
    from billing.money import MILLI_PER_CREDIT
    from bot.assemble import assemble
    from bot.settings import Settings
    from fakes.wechat_api import FakeWeChat
    from simulator import start_simulator

    aes_key = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    fake = await FakeWeChat(appid=APPID).start()
    sim = await start_simulator(latency=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,
            wechat_token=TOKEN,
            wechat_appid=APPID,
            wechat_secret=fake.secret,
            wechat_aes_key=aes_key,
            wechat_mode=mode,
            wechat_api_base=fake.url,
            wallet_url=wallet_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            openai_base_url=sim.openai_url,
            openai_api_key="sk-bench",
            log_level="WARNING",
            max_inflight_per_user=4,
        )
        core: Any
        if core_kind == "echo":
            from bot.store import open_store

            core = EchoCore(await open_store(settings.wallet_url))
        else:
            core = await assemble(settings)
            await core.start()
        for user in range(users if core_kind == "real" else 0):
            account = await core.account_of("wechat", f"o-bench-{user}")
            await core.wallet.credit(account, 10_000 * MILLI_PER_CREDIT, f"bench:{user}", "bench")
        app = web.Application()
        front = install(core, settings, app)
        assert front is not None
        front.timing = PassiveTiming(window=25.0, hold=25.0)  # measure answers, not timeouts
        await front.start()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{settings.wechat_path}"

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        job = {"count": count, "concurrency": concurrency, "users": users, "seed": seed}
        proc = ctx.Process(target=_generator, args=(url, aes_key, job, child), daemon=True)
        proc.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, parent.recv)  # built
        sent_before = len(fake.sent)
        start = time.perf_counter()
        parent.send("go")
        result = await loop.run_in_executor(None, parent.recv)
        answered = time.perf_counter() - start
        if mode == "customer_service":
            await _all_sent(fake, sent_before + count, 120.0)
            answered = time.perf_counter() - start
        answers = len(fake.sent) - sent_before if mode == "customer_service" else count
        proc.join(timeout=10)
        await front.stop()
        await runner.cleanup()
        await core.close()
    await sim.close()
    await fake.close()
    lat = sorted(result["latencies"])
    return {
        "mode": mode,
        "concurrency": concurrency,
        "count": count,
        "callbacks_per_s": count / result["elapsed"],
        "answers_per_s": answers / answered,
        "p50_ms": statistics.median(lat) * 1000,
        "p95_ms": lat[int(len(lat) * 0.95) - 1] * 1000,
        "errors": result["errors"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench wechat", description=__doc__)
    parser.add_argument("--modes", default="passive,customer_service")
    parser.add_argument("--count", type=int, default=1000, help="callbacks per run")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--cores",
        default="real,echo",
        help="real: the Core with wallet and simulated model; echo: an instant stub (the "
        "front end alone)",
    )
    parser.add_argument(
        "--backends",
        default="sqlite,redis",
        help="where the wallet and the Store live: sqlite (a temporary file), redis (a "
        "throwaway redis-server, or REDIS_URL)",
    )
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(
        "| store  | core | mode             | conc. | callbacks/s | answers/s | p50 ms | p95 ms |"
        " errors |\n|--------|------|------------------|-------|-------------|-----------|--------|"
        "--------|--------|"
    )
    seed = int(time.time()) % 1000
    for backend in args.backends.split(","):
        with _store(backend) as url:
            for core_kind, mode, conc in itertools.product(
                args.cores.split(","),
                args.modes.split(","),
                (int(c) for c in args.concurrency.split(",")),
            ):
                seed += 1
                if url.startswith("redis"):
                    _flush(url)
                r = runtime.run(run(mode, args.count, conc, args.users, seed, url, core_kind))
                print(
                    f"| {backend:<6} | {core_kind:<4} | {r['mode']:<16} | {r['concurrency']:>5} "
                    f"| {r['callbacks_per_s']:>11,.0f} | {r['answers_per_s']:>9,.0f} "
                    f"| {r['p50_ms']:>6.1f} | {r['p95_ms']:>6.1f} | {r['errors']:>6} |",
                    flush=True,
                )


@contextlib.contextmanager
def _store(backend: str) -> Iterator[str]:
    """ "" for a fresh SQLite file per run, or a Redis URL (REDIS_URL or a throwaway server)."""
    if backend == "sqlite":
        yield ""
        return
    from fakes import services

    with services.redis_server() as url:
        if not url:
            raise SystemExit("no Redis: install redis-server or set REDIS_URL")
        yield url


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


if __name__ == "__main__":
    main()
