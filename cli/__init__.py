"""The `creditbot` command. Each subcommand group lives in its own module of this package.

A module takes part by defining `register(subparsers)`, which adds its parsers and sets
`func` (a callable taking the parsed args and returning an exit code) on each. Front ends add
their commands (`chat`, `run`) through the `creditbot.commands` entry point group, so the core
never imports the adapters wing.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="creditbot",
        description="A Telegram and WeChat bot that sells GPT and Midjourney on prepaid credits.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    for ep in sorted(entry_points(group="creditbot.commands"), key=lambda e: e.name):
        ep.load().register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
