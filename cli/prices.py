"""`creditbot prices`, `creditbot tokens` and `creditbot cost`: the price list, checked by hand.

An operator holds `prices` against their published page, and checks a user's ledger line with
`tokens` (the prompt count of a request) and `cost` (what those tokens cost). Output is bare so
scripts can use it; any refusal is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from billing.money import CREDITS_PER_CNY, format_credits, format_decimal
from billing.pricing import ModelPrice, PriceFileError, PriceList, UnknownModel
from bot.settings import get_settings

EXIT_REFUSED = 1


class CliError(Exception):
    """A refusal to print as `creditbot <command>: error: ...`."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prices",
        help="print the price list",
        description="Every priced model: context window, credits and CNY per 1K tokens.",
    )
    p.set_defaults(func=_guarded("prices", _prices))

    p = subparsers.add_parser(
        "tokens",
        help="count the prompt tokens of a chat request",
        description="Prompt tokens of a JSON array of chat messages, counted as OpenAI does.",
    )
    p.add_argument("--model", required=True, help="model name, e.g. gpt-4o")
    p.add_argument("file", metavar="FILE", help="JSON array of messages; - reads stdin")
    p.set_defaults(func=_guarded("tokens", _tokens))

    p = subparsers.add_parser(
        "cost",
        help="what a reply costs, in credits",
        description="Credits for one reply: exact, rounded up once to the next millicredit.",
    )
    p.add_argument("--model", required=True, help="model name, e.g. gpt-4o")
    p.add_argument("--prompt-tokens", type=_count, required=True, metavar="N")
    p.add_argument("--completion-tokens", type=_count, required=True, metavar="K")
    p.add_argument(
        "--cached-tokens",
        type=_count,
        default=0,
        metavar="C",
        help="the part of the prompt the API reports as cached",
    )
    p.set_defaults(func=_guarded("cost", _cost))


def load_prices() -> PriceList:
    """The operator's price list: PRICES_FILE if set, else the shipped defaults."""
    return PriceList.load(get_settings().prices_file)


def _guarded(name: str, run: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    def func(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (CliError, UnknownModel, PriceFileError) as exc:
            print(f"creditbot {name}: error: {exc}", file=sys.stderr)
            return EXIT_REFUSED

    return func


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _prices(args: argparse.Namespace) -> int:
    print(render_price_table(load_prices()), end="")
    return 0


def _tokens(args: argparse.Namespace) -> int:
    price = load_prices().get(args.model)
    if price.kind != "chat":
        raise CliError(f"{price.name} is not a chat model")
    from billing.tokens import count_messages  # loads tiktoken only when needed

    messages = _read_messages(args.file)
    try:
        count = count_messages(price, messages)
    except ValueError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    print(count)
    return 0


def _cost(args: argparse.Namespace) -> int:
    prices = load_prices()
    try:
        milli = prices.chat_cost(
            args.model, args.prompt_tokens, args.completion_tokens, args.cached_tokens
        )
    except ValueError as exc:  # UnknownModel too: one line on stderr either way
        raise CliError(str(exc)) from None
    print(format_credits(milli))
    return 0


def _read_messages(source: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {source}: {exc}") from None
    where = "stdin" if source == "-" else source
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise CliError(f"{where} must hold a non-empty JSON array of chat messages")
    for index, message in enumerate(data):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise CliError(f"{where}: message {index} must be an object with a string 'role'")
    return data


# --- the table ------------------------------------------------------------------------------


def render_price_table(prices: PriceList) -> str:
    """The price list as aligned text (credits and CNY per 1K tokens, then per image)."""
    lines = [
        f"Prices from {prices.source}",
        f"credits per 1K tokens; 1 CNY = {CREDITS_PER_CNY:,} credits; "
        "a model not listed is refused",
        "",
    ]
    header = (
        "model",
        "context",
        "in/1K",
        "cached/1K",
        "out/1K",
        "CNY in/1K",
        "CNY cached/1K",
        "CNY out/1K",
    )
    rows = [header] + [_chat_row(m) for m in prices.chat_models()]
    lines += _align(rows, left=1)
    aliases = prices.aliases()
    if aliases:
        lines += ["", "aliases:"]
        lines += [f"  {alias} -> {model}" for alias, model in aliases.items()]
    refused = prices.refused()
    if refused:
        lines += ["", "refused:"]
        lines += [f"  {model}: {reason}" for model, reason in refused.items()]
    for image in prices.image_models():
        lines += ["", f"{image.name}, per image:"]
        rows = [("action", "credits", "CNY")]
        rows += [
            (action, format_credits(milli), _cny(Fraction(milli, 1000)))
            for action, milli in image.actions.items()
        ]
        lines += ["  " + line for line in _align(rows, left=1)]
    return "\n".join(lines) + "\n"


def _chat_row(m: ModelPrice) -> tuple[str, ...]:
    def credits(value: Fraction | None) -> str:
        return "-" if value is None else format_decimal(value)

    def cny(value: Fraction | None) -> str:
        return "-" if value is None else _cny(value)

    return (
        m.name,
        f"{m.context_window:,}" if m.context_window else "-",
        credits(m.input),
        credits(m.cached_input),
        credits(m.output),
        cny(m.input),
        cny(m.cached_input),
        cny(m.output),
    )


def _cny(credits: Fraction) -> str:
    return format_decimal(credits / CREDITS_PER_CNY)


def _align(rows: list[tuple[str, ...]], *, left: int) -> list[str]:
    """Pad columns: the first `left` columns flush left, the numbers flush right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out
