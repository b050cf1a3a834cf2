"""`creditbot simulate`: the simulated OpenAI + midjourney-proxy upstream on one local port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from simulator import start_simulator


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="serve a simulated OpenAI and midjourney-proxy upstream (no keys, no network)",
        description=(
            "Serve OpenAI's /v1/chat/completions and midjourney-proxy's /mj API on one port, "
            "with deterministic replies counted by the bot's own tokenizer and faults on "
            "request (e.g. '[[fault:cut]]' in a message). Point OPENAI_BASE_URL and "
            "MJ_BASE_URL at the URLs it prints."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8787, help="port (0 picks a free one)")
    parser.add_argument(
        "--latency", type=float, default=0.02, help="seconds before each streamed chunk"
    )
    parser.add_argument(
        "--mj-seconds", type=float, default=5.0, help="how long a Midjourney task takes"
    )
    parser.add_argument("--api-key", default="", help="require this OpenAI key (default: any)")
    parser.add_argument("--mj-secret", default="", help="require this mj-api-secret")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    sim = await start_simulator(
        args.host,
        args.port,
        latency=args.latency,
        mj_duration=args.mj_seconds,
        api_key=args.api_key or None,
        mj_secret=args.mj_secret or None,
    )
    print(f"Simulated upstream on {sim.url}", flush=True)
    print(f"  OPENAI_BASE_URL={sim.openai_url}", flush=True)
    print(f"  MJ_BASE_URL={sim.mj_url}", flush=True)
    print("Replies are simulated. Press Ctrl-C to stop.", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopped.set)
    try:
        await stopped.wait()
    finally:
        await sim.close()
    return 0
