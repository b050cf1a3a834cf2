"""Shared pieces of the business admin commands (codes, users, report, check).

`bank_command` is `admin.wallet_command` for commands that also need the bot's store (codes,
identities, refund markers): it opens both at WALLET_URL and reports refusals on one line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta

import billing
from billing.wallet.base import Entry, Wallet, WalletError
from bot.settings import get_settings
from bot.store import open_store
from bot.store.base import Store

BankRun = Callable[[Wallet, Store, argparse.Namespace], Awaitable[int]]

EXIT_REFUSED = 1
PAGE = 1000


class Refused(Exception):
    """An admin command refuses; the message is printed as is."""


def bank_command(name: str, run: BankRun) -> Callable[[argparse.Namespace], int]:
    """An argparse `func`: open wallet and store, run, close; refusals exit 1."""

    async def main(args: argparse.Namespace) -> int:
        url = get_settings().wallet_url
        wallet = await billing.open_wallet(url)
        try:
            store = await open_store(url)
            try:
                return await run(wallet, store, args)
            finally:
                await store.close()
        finally:
            await wallet.close()

    def func(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(main(args))
        except (Refused, WalletError, ValueError, OSError) as exc:
            print(f"creditbot admin {name}: error: {exc}", file=sys.stderr)
            return EXIT_REFUSED

    return func


def parse_day(text: str) -> date:
    """An argparse type for YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from exc


def parse_moment(text: str, *, end_of_day: bool = True) -> datetime:
    """A date (the end of that day, UTC, when `end_of_day`) or an ISO date-time (UTC if naive)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(), UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD or an ISO time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def all_entries(wallet: Wallet, account: str) -> list[Entry]:
    """Every ledger entry of the account, oldest first."""
    export = getattr(wallet, "export_ledger", None)
    if export is not None:
        return list(await export(account))
    newest_first = await wallet.entries(account, limit=2**31 - 1)
    return list(reversed(newest_first))
