"""`creditbot chat` and `creditbot run`, registered through the `creditbot.commands` entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from billing.pricing import PriceFileError
from bot import config, runtime
from bot.settings import Settings

log = logging.getLogger(__name__)


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
    try:
        from bot.logs import setup_logging
    except ImportError:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO)
        return
    level = getattr(settings, "log_level", "INFO")
    if quiet and level.upper() not in ("DEBUG",):
        level = "WARNING"  # the console's own output is the conversation
    setup_logging(level, settings=settings)


def refuse(error: Exception) -> int:
    """A configuration the bot cannot start with: one line on stderr, exit status 2."""
    print(f"creditbot: configuration error: {error}", file=sys.stderr)
    return 2


def chat_command(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from adapters.console import run_console

    try:
        settings = settings or config.load()
        _setup_logging(settings, quiet=True)
        return runtime.run(run_console(settings), settings.event_loop)
    except (config.ConfigError, PriceFileError) as exc:
        return refuse(exc)


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
