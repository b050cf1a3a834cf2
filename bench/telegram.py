"""Telegram front end throughput: updates per second through webhook mode, end to end.

The whole path runs for real on loopback: an aiohttp client posts Bot API updates to the
bot's webhook (secret checked), the dispatcher dedupes and routes them, the core bills them on
a SQLite (or Redis) wallet, the simulated upstream answers at zero latency, and the replies go
to a fake Bot API server. An update counts as done when its final `sendMessage` reached that
server.

Workloads: `chat` (a streamed 20-token reply: draft previews, then the final message, held
and captured in the wallet), `command` (/balance: no upstream, one wallet read) and `adapter`
(the front end alone: a scripted core streams a reply in 10 deltas, no store or wallet; what
aiogram, the dispatcher, rendering and the Bot API calls cost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

from adapters.telegram import install
from billing.money import MILLI_PER_CREDIT
from bot import runtime  # the product's event loop (uvloop where installed)
from bot.assemble import assemble
from bot.events import FinalText, Message, TextDelta
from bot.scheduler import Scheduler
from bot.settings import Settings
from fakes import services
from fakes import telegram_updates as u
from fakes.telegram_api import TOKEN, FakeBotAPI
from simulator import start_simulator

SECRET = "bench-secret"
TEXTS = {"chat": "Say something [[tokens:20]]", "command": "/balance", "adapter": "hello"}
REPLY = "A scripted reply of **twenty** words, streamed in pieces the way a model would send " * 2


class _MemoryStore:
    """Just enough of the Store protocol for the scripted core."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        if key in self.data:
            return False
        self.data[key] = value
        return True


class _ScriptedCore:
    """The front end's side only: a reply streamed in 10 deltas, no store, no wallet."""

    def __init__(self) -> None:
        self.kv = _MemoryStore()
        self.scheduler = Scheduler()  # never started: no periodic jobs in the bench

    async def handle(self, msg: Message, *, stop: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
        step = len(REPLY) // 10
        for i in range(0, len(REPLY), step):
            yield TextDelta(REPLY[i : i + step])
        yield FinalText(REPLY)

    def set_sink(self, platform: str, sink: object) -> None:
        pass

    async def retry_stars(self) -> int:
        return 0  # no Stars payments in the bench

    async def close(self) -> None:
        pass


async def run(
    workload: str, count: int, concurrency: int, users: int, redis_url: str | None
) -> dict[str, float]:
    api = await FakeBotAPI().start()
    sim = await start_simulator(latency=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            client.flushdb()
            client.close()
        settings = Settings(
            _env_file=None,
            telegram_bot_token=TOKEN,
            telegram_api_base=api.url,
            telegram_webhook_url="https://bot.example.com/telegram",
            telegram_webhook_secret=SECRET,
            wallet_url=redis_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            openai_base_url=sim.openai_url,
            openai_api_key="sk-bench",
            log_level="WARNING",
        )
        core: Any = _ScriptedCore() if workload == "adapter" else await assemble(settings)
        for user in range(users if workload != "adapter" else 0):
            account = await core.account_of("telegram", str(10_000 + user))
            await core.wallet.credit(account, 1_000 * MILLI_PER_CREDIT, f"bench:{user}", "bench")
        app = web.Application()
        front = install(core, settings, app)
        assert front is not None
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{settings.telegram_webhook_path}"
        await front.start()
        baseline = sum(api.sent_count.values())
        answers: list[float] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        # each user has one message in flight at a time (the core's per-user limit)
        lanes = [asyncio.Lock() for _ in range(users)]

        async def worker(http: ClientSession) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                user = i % users
                async with lanes[user]:
                    chat = 10_000 + user
                    done = api.sent_count[chat]
                    update = u.message(TEXTS[workload], user_id=10_000 + user)
                    started = time.perf_counter()
                    async with http.post(
                        url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
                    ) as response:
                        assert response.status == 200
                    answers.append(time.perf_counter() - started)
                    async with asyncio.timeout(30):  # the reply reached the Bot API
                        await api.wait_sent(chat, done + 1)

        started = time.perf_counter()
        async with ClientSession() as http:
            await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        sent = sum(api.sent_count.values()) - baseline
        drafts = len(api.calls_to("sendMessageDraft"))
        await front.stop()
        await runner.cleanup()
        await core.close()
    await sim.close()
    await api.close()
    answers.sort()
    return {
        "updates": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "webhook_p50_ms": statistics.median(answers) * 1000,
        "webhook_p99_ms": answers[int(len(answers) * 0.99) - 1] * 1000,
        "replies": sent,
        "drafts": drafts,
    }


async def loopback_baseline(count: int, concurrency: int) -> float:
    """Bare aiohttp POSTs per second to a handler that only answers 200, same client, same
    process: the ceiling this machine puts on any webhook at this moment."""

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    body = u.message("x")
    left = list(range(count))

    async def worker(http: ClientSession) -> None:
        while left:
            left.pop()
            async with http.post(url, json=body) as response:
                await response.read()

    started = time.perf_counter()
    async with ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await runner.cleanup()
    return count / elapsed


async def amain(args: argparse.Namespace) -> None:
    print(
        f"Telegram webhook -> core -> simulator (latency 0) -> fake Bot API; "
        f"{args.updates} updates, concurrency {args.concurrency}, {args.users} users"
    )
    print("| store  | workload | updates | seconds | updates/s | webhook p50 ms | webhook p99 ms |")
    print("|--------|----------|---------|---------|-----------|----------------|----------------|")
    raw = await loopback_baseline(args.updates, args.concurrency)
    print(f"| (bare aiohttp POST, same process: {raw:,.0f}/s) |")
    if "adapter" in args.workloads:
        r = await run("adapter", args.updates, args.concurrency, args.users, None)
        _row("none", "adapter", r)
    for backend in args.backends:
        with contextlib.ExitStack() as stack:
            redis_url = None
            if backend == "redis":
                redis_url = stack.enter_context(services.redis_server())
                if not redis_url:
                    print("| redis  | (no redis-server here: skipped) |")
                    continue
            for workload in args.workloads:
                if workload != "adapter":
                    r = await run(workload, args.updates, args.concurrency, args.users, redis_url)
                    _row(backend, workload, r)


def _row(store: str, workload: str, r: dict[str, float]) -> None:
    print(
        f"| {store:<6} | {workload:<8} | {r['updates']:>7} | {r['seconds']:>7.2f} | "
        f"{r['per_second']:>9.0f} | {r['webhook_p50_ms']:>14.1f} | {r['webhook_p99_ms']:>14.1f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench telegram", description=__doc__)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument(
        "--backends", nargs="*", choices=("sqlite", "redis"), default=["sqlite", "redis"]
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=sorted(TEXTS), default=["adapter", "command", "chat"]
    )
    runtime.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
