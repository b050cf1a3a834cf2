"""Messages per second and added latency through the conversation core.

The upstream is an in-process fake provider that answers at once (three deltas and a usage),
so what is measured is the core's own work: dedupe, account, in-flight lease, conversation
load/trim/count/save, balance, hold, capture. Upstream time is excluded by construction; the
time spent inside the fake is measured anyway (per message) and subtracted.

    python -m bench core [--messages N] [--users U] [--concurrency C] [--backend B]
                         [--rate R] [--seconds S] [--open-users K]

Each backend runs three phases:

- alone: one message at a time (after a warm-up): the added latency with nothing else running;
- closed loop: C workers, each sending its users' messages back to back: the most messages
  per second one process can take. Its latencies include the queueing of C messages in flight
  (Little's law: C / throughput), so they are printed for reference, not judged;
- open loop: messages arrive on a fixed schedule at R per second (default: the backend's
  target) for S seconds, spread over K users (each user has one message in flight at most, as
  the per-user limit requires: a user's next message waits until the previous one is done).
  Latency runs from each message's scheduled arrival to its FinalText (the reply reaching the
  adapter; the history is saved and the lease freed just after), so a stall delays every
  message due meanwhile and is counted in full (no coordinated omission). The rate is
  sustained if the messages were answered at >= 97% of R.

Backends: memory (the core alone: an in-memory store and wallet), sqlite (the default
synchronous=FULL: every commit reaches the disk), sqlite-normal (synchronous=NORMAL), redis,
or all.

Targets (issue 3): p99 added latency < 5 ms; >= 1,000 msg/s on SQLite, >= 3,000 on Redis,
per process. The verdict line judges the open loop at the target rate (p99 < 5 ms, rate
sustained) and the closed loop's maximum (>= the target rate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from billing.wallet.base import HELD, Balance, Entry, Hold, InsufficientCredits
from bot import runtime  # the product's event loop (uvloop where installed)
from bot.assemble import assemble
from bot.core import Core
from bot.events import FinalText, Message
from bot.providers.openai import Delta, Usage
from bot.settings import Settings

# Messages per second each backend must take (issue 3). Memory has no target of its own (it is
# the core alone); it is offered the highest one.
TARGET_RATE = {"memory": 3000, "sqlite": 1000, "sqlite-normal": 1000, "redis": 3000}
TARGET_P99_MS = 5.0
SUSTAINED = 0.97  # answered at >= this share of the offered rate


class MemoryStore:
    """The Store protocol in a dict: isolates the core's own cost from the storage's."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, float | None]] = {}
        self.sets: dict[str, set[str]] = {}

    def _live(self, key: str) -> str | None:
        item = self.data.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] < time.monotonic():
            del self.data[key]
            return None
        return item[0]

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def batch(self, ops: list[tuple]) -> list:
        return [await getattr(self, op[0])(*op[1:]) for op in ops]

    async def get_many(self, keys: list[str]) -> list[str | None]:
        return [self._live(key) for key in keys]

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self.data[key] = (value, time.monotonic() + ttl if ttl else None)

    async def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl)
        return True

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def delete_if(self, key: str, value: str) -> bool:
        if self._live(key) != value:
            return False
        return self.data.pop(key, None) is not None

    async def incr(self, key: str, ttl: float | None = None) -> int:
        value = int(self._live(key) or 0) + 1
        await self.set(key, str(value), ttl)
        return value

    async def sadd(self, name: str, member: str) -> None:
        self.sets.setdefault(name, set()).add(member)

    async def srem(self, name: str, member: str) -> None:
        self.sets.get(name, set()).discard(member)

    async def smembers(self, name: str) -> set[str]:
        return set(self.sets.get(name, set()))

    async def close(self) -> None:
        pass


class MemoryWallet:
    """Just enough of the Wallet protocol for the chat path, in memory."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.holds: dict[str, Hold] = {}
        self.by_key: dict[str, Hold] = {}
        self.entries_: list[Entry] = []

    def _entry(self, account: str, kind: str, amount: int, key: str, reason: str, **kw) -> Entry:
        entry = Entry(str(len(self.entries_) + 1), account, kind, amount, key, reason,
                      datetime.now(UTC), kw.get("ref"), kw.get("meta") or {})  # fmt: skip
        self.entries_.append(entry)
        self.totals[account] = self.totals.get(account, 0) + amount
        return entry

    async def credit(self, account: str, amount: int, key: str, reason: str, **kw) -> Entry:
        return self._entry(account, "credit", amount, key, reason, **kw)

    async def hold(self, account: str, amount: int, key: str, ttl: float) -> Hold:
        if key in self.by_key:
            return self.by_key[key]
        available = self.totals.get(account, 0) - self.held.get(account, 0)
        if available < amount:
            raise InsufficientCredits(account, amount, available)
        now = datetime.now(UTC)
        hold = Hold(str(len(self.holds) + 1), account, amount, key, HELD, now, now)
        self.holds[hold.id] = self.by_key[key] = hold
        self.held[account] = self.held.get(account, 0) + amount
        return hold

    async def capture(self, hold_id: str, amount: int, *, reason: str = "", meta=None) -> Entry:
        hold = self.holds[hold_id]
        self.held[hold.account] -= hold.amount
        self.holds[hold_id] = replace(hold, status="captured", captured=amount)
        return self._entry(hold.account, "capture", -amount, hold.key, reason, meta=meta)

    async def void(self, hold_id: str, reason: str = "") -> Hold:
        hold = self.holds[hold_id]
        self.held[hold.account] -= hold.amount
        self.holds[hold_id] = replace(hold, status="voided")
        return self.holds[hold_id]

    async def balance(self, account: str) -> Balance:
        return Balance(account, self.totals.get(account, 0), self.held.get(account, 0))

    async def sweep(self, now=None) -> int:
        return 0

    async def close(self) -> None:
        pass


class ZeroUpstream:
    """A provider that answers immediately; it adds the time spent inside it to the message's
    own tally (`SPENT`, a context variable: each message runs in a task of its own)."""

    async def stream_chat(
        self, model: str, messages: list[dict], max_tokens: int | None, *, stop=None
    ) -> AsyncIterator[Delta | Usage]:
        started = time.perf_counter()
        pieces = ("Hello", " there", ", friend.")
        tally = SPENT.get(None)
        if tally is not None:
            tally[0] += time.perf_counter() - started
        for piece in pieces:
            yield Delta(piece)
        yield Usage(prompt_tokens=20, completion_tokens=5)

    async def close(self) -> None:
        pass


SPENT: contextvars.ContextVar[list[float]] = contextvars.ContextVar("upstream_spent")


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (seconds) in milliseconds; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


@dataclass
class OpenLoop:
    """Messages offered at a fixed rate: latency from each one's scheduled arrival."""

    rate: float  # offered, messages per second
    users: int
    latencies: list[float]  # seconds, from scheduled arrival to FinalText, minus upstream
    seconds: float  # from the first scheduled arrival to the last reply
    cpu: float
    lags: list[float] = field(default_factory=list)  # started after the slot, seconds

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    @property
    def sustained(self) -> bool:
        return self.achieved >= SUSTAINED * self.rate

    def p99_ms(self) -> float:
        return pct(self.latencies, 0.99)


@dataclass
class Result:
    backend: str
    messages: int
    seconds: float
    latencies: list[float]
    serial: list[float]
    cpu: float  # process CPU seconds during the closed-loop run (all threads, incl. the store's)
    concurrency: int = 0
    open: OpenLoop | None = None
    target: int = field(default=0)

    @property
    def max_rate(self) -> float:
        return self.messages / self.seconds

    def line(self) -> str:
        """The closed-loop maximum and the latency of one message alone."""
        return (
            f"{self.backend:13} max {self.max_rate:6.0f} msg/s "
            f"(closed loop, {self.concurrency} in flight; CPU {self.cpu / self.messages * 1000:.2f}"
            f" ms/msg; latency incl. queueing p50 {pct(self.latencies, 0.5):.1f} ms "
            f"p99 {pct(self.latencies, 0.99):.1f} ms) | alone p50 {pct(self.serial, 0.5):.2f} ms "
            f"p99 {pct(self.serial, 0.99):.2f} ms"
        )

    def open_line(self) -> str:
        o = self.open
        if o is None:
            return f"{self.backend:13} open loop skipped"
        n = len(o.latencies)
        return (
            f"{self.backend:13} at {o.rate:6.0f} msg/s offered ({n} messages, {o.users} users): "
            f"answered {o.achieved:6.0f} msg/s ({'sustained' if o.sustained else 'NOT sustained'})"
            f" | added latency p50 {pct(o.latencies, 0.5):.2f} ms p99 {o.p99_ms():.2f} ms "
            f"max {pct(o.latencies, 1.0):.2f} ms (start lag p99 {pct(o.lags, 0.99):.2f} ms)"
            f" | CPU {o.cpu / n * 1000:.2f} ms/msg"
        )

    def verdict(self) -> str:
        """PASS/FAIL against issue 3's targets."""
        o = self.open
        if o is None:
            return f"verdict {self.backend}: no open-loop run, nothing judged"
        p99 = o.p99_ms()
        checks = [
            (p99 < TARGET_P99_MS, f"p99 {p99:.2f} ms {'<' if p99 < TARGET_P99_MS else '>='} "
             f"{TARGET_P99_MS:g} ms at {o.rate:.0f} msg/s"),
            (o.sustained, f"{o.rate:.0f} msg/s {'sustained' if o.sustained else 'NOT sustained'}"
             f" ({o.achieved:.0f} answered)"),
        ]  # fmt: skip
        if self.target:
            ok = self.max_rate >= self.target
            checks.append(
                (ok, f"max {self.max_rate:.0f} msg/s {'>=' if ok else '<'} {self.target}")
            )
        else:
            checks.append((True, f"max {self.max_rate:.0f} msg/s (no throughput target)"))
        passed = all(ok for ok, _ in checks)
        head = "PASS" if passed else "FAIL"
        return f"verdict {self.backend}: {head} - " + "; ".join(text for _, text in checks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """REDIS_URL, else a throwaway redis-server on a free port, else None."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _fund(core: Core, names: list[str]) -> None:
    """Credit every account generously (concurrently: a SQLite wallet commits them in groups)."""
    for first in range(0, len(names), 200):
        chunk = names[first : first + 200]
        await asyncio.gather(
            *(core.wallet.credit(name, 10**12, f"fund-{name}", "bench") for name in chunk)
        )


async def run_backend(
    backend: str,
    url: str,
    *,
    messages: int,
    users: int,
    concurrency: int,
    rate: float | None = None,
    seconds: float = 3.0,
    open_users: int = 1000,
) -> Result:
    """Run the three phases on one backend. `rate` None: the backend's target; 0: no open loop."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        wallet_url=url,
        openai_api_key="bench",
        sweep_interval_seconds=3600,
    )
    upstream = ZeroUpstream()
    if backend == "memory":
        core = await assemble(
            settings,
            openai=upstream,
            wallet=MemoryWallet(),
            store=MemoryStore(),  # type: ignore[arg-type]
        )
    else:
        core = await assemble(settings, openai=upstream)
    await core.start()  # as the bot does before it serves (tokenizers loaded, heap frozen)
    try:
        await _fund(core, [f"bench:u{u}" for u in range(users)])
        run_id = time.time_ns()

        async def one(user: str, n: int) -> tuple[float, float]:
            """One message through the core, to the end of handle() (the lease freed): the
            upstream's own time in it, and when the reply (FinalText) reached the adapter."""
            msg = Message("bench", user, user, f"{run_id}-{user}-{n}", "Hi there!")
            tally = [0.0]
            SPENT.set(tally)
            answered = 0.0
            async for event in core.handle(msg):
                if isinstance(event, FinalText):
                    answered = time.perf_counter()
            assert answered, "no reply"
            return tally[0], answered

        async def timed(user: str, n: int) -> float:
            """One message's added latency: from sending it to its reply, less the upstream's
            own time."""
            started = time.perf_counter()
            upstream_time, answered = await one(user, n)
            return answered - started - upstream_time

        serial: list[float] = []
        for n in range(min(500, messages)):  # warm up, then added latency with no contention
            serial.append(await timed(f"u{n % users}", -1 - n))

        latencies: list[float] = []
        per_user = max(1, messages // users)
        total = per_user * users

        async def worker(first: int) -> None:
            # Each worker owns every concurrency-th user: one message per user at a time,
            # like a person waiting for the reply before typing the next one.
            mine = range(first, users, concurrency)
            for n in range(per_user):
                for user in mine:
                    latencies.append(await timed(f"u{user}", n))

        gc.collect()
        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(worker(i) for i in range(min(concurrency, users))))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        result = Result(backend, total, elapsed, latencies, serial, cpu, concurrency)
        result.target = TARGET_RATE.get(backend, 0) if backend != "memory" else 0
        offered = TARGET_RATE.get(backend, 1000) if rate is None else rate
        if offered > 0:
            await _fund(core, [f"bench:o{u}" for u in range(open_users)])
            gc.collect()
            result.open = await open_loop(one, offered, seconds, open_users)
        return result
    finally:
        await core.close()


async def open_loop(
    one: Callable[[str, int], Awaitable[tuple[float, float]]],
    rate: float,
    seconds: float,
    users: int,
) -> OpenLoop:
    """Offer `rate` messages per second for `seconds`, message i from user "o{i % users}".

    `one(user, n)` sends message n of `user` and returns the upstream's own time in it and when
    the reply came (time.perf_counter()).

    A dispatcher wakes when the next message is due and starts every message due by then, each
    in a task of its own; a user's message whose previous one is still being answered waits for
    it (as a person does), and that wait counts: latency is measured from the schedule.
    """
    count = max(1, int(rate * seconds))
    interval = 1.0 / rate
    latencies: list[float] = [0.0] * count
    last: dict[int, asyncio.Task[None]] = {}
    # Messages still being answered; only they are kept (and waited for at the end), as a
    # server keeps only its live requests: thousands of finished tasks would make the
    # garbage collector's full passes, and a final gather over all of them, stall the loop.
    live: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        live.discard(task)
        if not task.cancelled() and task.exception() is not None:
            errors.append(task.exception())  # type: ignore[arg-type]

    done_at = 0.0
    lags: list[float] = []  # how late each message was started after its slot

    async def arrive(i: int, due: float, before: asyncio.Task[None] | None) -> None:
        nonlocal done_at
        if before is not None:  # the user's previous message is still being answered
            await asyncio.wait([before])
        upstream_time, answered = await one(f"o{i % users}", i)
        latencies[i] = answered - due - upstream_time
        done_at = max(done_at, time.perf_counter())

    start = time.perf_counter() + 0.01
    cpu = time.process_time()
    i = 0
    while i < count:
        now = time.perf_counter()
        due = start + i * interval
        if due > now:
            # The loop's timers tick in milliseconds (uvloop spins on a shorter sleep): a message
            # may start up to 1 ms after its slot, and that delay counts in its latency.
            await asyncio.sleep(max(due - now, 0.001))
            continue
        while i < count and start + i * interval <= now:
            lags.append(now - (start + i * interval))
            user = i % users
            task = asyncio.create_task(arrive(i, start + i * interval, last.get(user)))
            last[user] = task
            live.add(task)
            task.add_done_callback(finished)
            i += 1
    while live:
        await asyncio.wait(set(live))
    if errors:
        raise errors[0]
    cpu = time.process_time() - cpu
    return OpenLoop(rate, users, latencies, done_at - start, cpu, lags)


async def amain(args: argparse.Namespace) -> None:
    results: list[Result] = []
    kw = {
        "messages": args.messages,
        "users": args.users,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seconds": args.seconds,
        "open_users": args.open_users,
    }

    def show(result: Result) -> None:
        results.append(result)
        print(result.line(), flush=True)
        print(result.open_line(), flush=True)

    print(f"(event loop: {runtime.loop_name()})", flush=True)
    if args.backend in ("all", "memory"):
        show(await run_backend("memory", "sqlite+aiosqlite:///:memory:", **kw))
    for name, sync in (("sqlite", "FULL"), ("sqlite-normal", "NORMAL")):
        if args.backend not in ("all", name):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}?synchronous={sync}"
            show(await run_backend(name, url, **kw))
    if args.backend in ("all", "redis"):
        with redis_server() as url:
            if url is None:
                print("redis   skipped: no REDIS_URL and no redis-server", flush=True)
            else:
                show(await run_backend("redis", url, **kw))
    if results:
        print(
            f"(closed loop: {args.messages} messages from {args.users} users, {args.concurrency} "
            f"in flight; open loop: {args.seconds:g} s at the offered rate from "
            f"{args.open_users} users; 'alone' = one message at a time; memory = the core alone,"
            " on an in-memory store and wallet)"
        )
        for result in results:
            print(result.verdict(), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench core", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: messages per second offered (default: the backend's target; 0: skip)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="open loop: how long")
    parser.add_argument("--open-users", type=int, default=1000, help="open loop: how many users")
    parser.add_argument(
        "--backend", choices=("all", "memory", "sqlite", "sqlite-normal", "redis"), default="all"
    )
    runtime.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
