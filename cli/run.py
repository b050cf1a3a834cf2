"""`creditbot chat` and `creditbot run`: the console chat, or every configured front end."""

from __future__ import annotations

import argparse
import logging
import sys

from billing.pricing import PriceFileError
from bot import config, runtime
from bot.logs import setup_logging
from bot.settings import Settings

log = logging.getLogger(__name__)

BANNER_SIMULATED = (
    "Replies are SIMULATED: no OPENAI_API_KEY is set, so a built-in fake of OpenAI and "
    "Midjourney answers.\nTo talk to the real services, set OPENAI_API_KEY (and MJ_BASE_URL, "
    "MJ_API_SECRET for images) in .env or the environment."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    chat = subparsers.add_parser(
        "chat",
        help="talk to the bot in this terminal (simulated upstream without OPENAI_API_KEY)",
        description="A console chat with the bot: the same commands and billing as on "
        "Telegram and WeChat, on the local account console:local. Reads lines from stdin and "
        "prints each reply when stdin is not a terminal.",
    )
    chat.set_defaults(func=chat_command)
    run = subparsers.add_parser(
        "run",
        help="start every configured front end (the console chat when none is)",
        description="Serve Telegram and/or WeChat (and the HTTP server on HTTP_PORT) when "
        "configured; with nothing configured, start the console chat.",
    )
    run.set_defaults(func=run_command)


def _setup_logging(settings: object, *, quiet: bool) -> None:
    level = getattr(settings, "log_level", "INFO")
    if quiet and level.upper() not in ("DEBUG",):
        level = "WARNING"  # the console's own output is the conversation
    setup_logging(level, settings=settings)


def refuse(error: Exception) -> int:
    """A configuration the bot cannot start with: one line on stderr, exit status 2."""
    print(f"creditbot: configuration error: {error}", file=sys.stderr)
    return 2


def chat_command(args: argparse.Namespace, settings: Settings | None = None) -> int:
    try:
        settings = settings or config.load()
        _setup_logging(settings, quiet=True)
        return runtime.run(console(settings), settings.event_loop)
    except (config.ConfigError, PriceFileError) as exc:
        return refuse(exc)


async def console(settings: Settings) -> int:
    """The console chat; without OPENAI_API_KEY, on the simulated upstream started here."""
    from adapters.console import run_console

    if not settings.simulated:
        return await run_console(settings)
    from simulator import start_simulator

    sim = await start_simulator(port=0)
    try:
        # The in-process simulator's server complains when a stopped reply hangs up on it.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        settings = settings.model_copy(
            update={
                "openai_base_url": sim.openai_url,
                "mj_base_url": sim.url,
                "mj_api_secret": "",
                "mj_poll_min_seconds": min(settings.mj_poll_min_seconds, 0.5),
            }
        )
        print(BANNER_SIMULATED, file=sys.stderr, flush=True)
        return await run_console(settings)
    finally:
        await sim.close()


def run_command(args: argparse.Namespace) -> int:
    from adapters.http import configured, serve

    try:
        settings = config.load()
    except config.ConfigError as exc:
        return refuse(exc)
    if not configured(settings):
        return chat_command(args, settings)
    _setup_logging(settings, quiet=False)
    try:
        return runtime.run(serve(settings), settings.event_loop)
    except (config.ConfigError, PriceFileError) as exc:
        return refuse(exc)
