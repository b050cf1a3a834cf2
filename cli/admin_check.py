"""`creditbot admin check`: reconcile the wallet against its own ledger.

For every account: the balance's total equals the sum of its ledger entries, its held amount
equals the sum of its open holds, and available credit is not negative. Across the wallet: no
hold is still open more than `--grace` seconds past its expiry (the bot's sweeper voids them
every SWEEP_INTERVAL_SECONDS; one that outlived it means the sweeper is not running). It also
lists redemption codes claimed by a user whose credit never landed (a crash between the two;
the user typing the code again finishes it).

Prints what it checked and every problem; exits 1 when there is a problem, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from billing.money import format_credits
from billing.wallet.base import Wallet
from bot import codes
from bot.settings import get_settings
from bot.store.base import Store
from bot.store.keys import code_done_key
from cli.admin_common import all_entries, bank_command


async def find_problems(
    wallet: Wallet, store: Store | None = None, *, grace: float = 120.0, now: datetime | None = None
) -> tuple[list[str], dict[str, int]]:
    """(problems, counts) for the whole wallet; an empty list means all is well."""
    now = now or datetime.now(UTC)
    problems: list[str] = []
    holds = await wallet.open_holds()
    held_by: dict[str, int] = defaultdict(int)
    late = 0
    for h in holds:
        held_by[h.account] += h.amount
        if h.expires_at + timedelta(seconds=grace) < now:
            late += 1
            problems.append(
                f"hold {h.id} of {h.account} ({format_credits(h.amount)} credits) expired at "
                f"{h.expires_at:%Y-%m-%d %H:%M:%S} UTC and is still open"
            )
    accounts = await wallet.accounts()
    entry_count = 0
    for account in accounts:
        b = await wallet.balance(account)
        entries = await all_entries(wallet, account)
        entry_count += len(entries)
        ledger = sum(e.amount for e in entries)
        if b.total != ledger:
            problems.append(
                f"account {account}: balance {format_credits(b.total)} but its ledger sums to "
                f"{format_credits(ledger)} (difference {format_credits(b.total - ledger)})"
            )
        if b.held != held_by.get(account, 0):
            problems.append(
                f"account {account}: {format_credits(b.held)} held but its open holds add up "
                f"to {format_credits(held_by.get(account, 0))}"
            )
        if b.available < 0:
            problems.append(f"account {account}: available is {format_credits(b.available)}")
    unfinished = 0
    if store is not None:
        for info in await codes.list_codes(store, now=now):
            if info.status == "used" and not await store.get(code_done_key(info.hash)):
                unfinished += 1
                problems.append(
                    f"code {info.id} was claimed by {info.used_by} but not credited yet "
                    f"(the user redeeming it again finishes it)"
                )
    counts = {
        "accounts": len(accounts),
        "entries": entry_count,
        "open_holds": len(holds),
        "late_holds": late,
        "unfinished_codes": unfinished,
    }
    return problems, counts


def register_admin(admin: argparse._SubParsersAction) -> None:
    p = admin.add_parser("check", help="verify balances against the ledger and hold expiry")
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long past expiry a hold may wait for the sweeper (default: 2 sweep intervals)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=bank_command("check", _check))


async def _check(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    grace = args.grace
    if grace is None:
        grace = 2 * get_settings().sweep_interval_seconds + 60
    problems, counts = await find_problems(wallet, store, grace=grace)
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, **counts}))
    else:
        print(
            f"checked {counts['accounts']} accounts, {counts['entries']} ledger entries, "
            f"{counts['open_holds']} open holds"
        )
        for line in problems:
            print(f"PROBLEM: {line}")
        print("no problems found" if not problems else f"{len(problems)} problem(s) found")
    return 1 if problems else 0
