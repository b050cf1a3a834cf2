"""`creditbot admin ...`: an operator's hands on the wallet at WALLET_URL.

    creditbot admin credit ACCOUNT CREDITS --reason TEXT [--ref ENTRY_ID] [--key KEY]
    creditbot admin balance ACCOUNT
    creditbot admin ledger ACCOUNT [--limit N] [--json]

Amounts are credits as people write them ("5", "0.25"); the wallet stores millicredits.
`credit --ref` links a compensation to the ledger entry it makes good. `--key` makes a credit
safe to retry: the same key again changes nothing.

Adding admin subcommands: put them in a module of this package named `admin_<topic>.py` that
defines `register_admin(subparsers)`; `register` below finds such modules by name and hands
each the `admin` subparsers. (Do not name the function `register`: the top-level CLI calls
every module's `register`.) Inside, `wallet_command(name, run)` wraps an async
`run(wallet, args) -> int` with the wallet's opening, closing and error reporting. Built-in
subcommands are listed in ADMIN_COMMANDS, name -> registrar.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import pkgutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import billing
from billing.money import format_credits, parse_credits
from billing.wallet.base import Entry, Wallet, WalletError
from bot.accounts import Accounts
from bot.settings import get_settings
from bot.store.base import Store
from cli.admin_common import bank_command

Registrar = Callable[[argparse._SubParsersAction], None]
WalletRun = Callable[[Wallet, argparse.Namespace], Awaitable[int]]

EXIT_REFUSED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "admin",
        help="operator commands on the wallet (credit, balance, ledger)",
        description="Operator commands against the wallet at WALLET_URL.",
    )
    admin = parser.add_subparsers(dest="admin_command", metavar="ACTION")
    for registrar in ADMIN_COMMANDS.values():
        registrar(admin)
    for module in _extension_modules():
        module.register_admin(admin)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def _extension_modules() -> list[Any]:
    """Every `cli/admin_*.py` that defines `register_admin`, in name order."""
    package = importlib.import_module(__package__ or "cli")
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("admin_"):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            if hasattr(module, "register_admin"):
                found.append(module)
    return found


def wallet_command(name: str, run: WalletRun) -> Callable[[argparse.Namespace], int]:
    """An argparse `func` that opens the configured wallet, runs `run`, and closes it.

    Refusals (wallet errors, bad amounts, an unreachable store) print one line on stderr
    and exit 1.
    """

    async def main(args: argparse.Namespace) -> int:
        wallet = await billing.open_wallet(get_settings().wallet_url)
        try:
            return await run(wallet, args)
        finally:
            await wallet.close()

    def func(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(main(args))
        except (WalletError, ValueError, OSError) as exc:
            print(f"creditbot admin {name}: error: {exc}", file=sys.stderr)
            return EXIT_REFUSED

    return func


# --- credit ---------------------------------------------------------------------------------


def _register_credit(admin: argparse._SubParsersAction) -> None:
    p = admin.add_parser(
        "credit",
        help="add credits to an account (top-up, grant, compensation)",
        description="Add credits to ACCOUNT; the ledger records the reason.",
    )
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("credits", metavar="CREDITS", help='credits, up to 3 decimals, e.g. "5.2"')
    p.add_argument("--reason", required=True, help="shown in the ledger")
    p.add_argument("--ref", metavar="ENTRY_ID", help="the ledger entry this compensates")
    p.add_argument("--key", help="idempotency key: the same key again credits nothing more")
    p.set_defaults(func=bank_command("credit", _credit))


async def _credit(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    amount = parse_credits(args.credits)
    if amount <= 0:
        raise ValueError("credit a positive amount")
    reason = args.reason.strip()
    if not reason:
        raise ValueError("--reason must not be empty")
    if args.ref is not None:
        linked = await wallet.get_entry(args.ref)
        if linked is None:
            raise ValueError(f"no ledger entry {args.ref!r} to compensate")
        if linked.account != args.account:
            raise ValueError(f"entry {args.ref} belongs to {linked.account}, not {args.account}")
    key = args.key or f"admin:credit:{uuid.uuid4().hex}"
    # Through Accounts.credit: credits to an account whose identities were /link-ed away
    # (a compensation must name the entry's own account) follow to the linked wallet.
    accounts = Accounts(store, wallet)
    entry = await accounts.credit(
        args.account, amount, key, reason, ref=args.ref, meta={"by": "admin-cli"}
    )
    now_at = await accounts.moved_to(entry.account)
    balance = await wallet.balance(now_at or entry.account)
    moved = f", moved to linked wallet {now_at}" if now_at else ""
    print(
        f"credited {format_credits(entry.amount)} to {entry.account} (entry {entry.id}{moved}); "
        f"available {format_credits(balance.available)}"
    )
    return 0


# --- balance --------------------------------------------------------------------------------


def _register_balance(admin: argparse._SubParsersAction) -> None:
    p = admin.add_parser("balance", help="an account's total, held and available credits")
    p.add_argument("account", metavar="ACCOUNT")
    p.set_defaults(func=wallet_command("balance", _balance))


async def _balance(wallet: Wallet, args: argparse.Namespace) -> int:
    b = await wallet.balance(args.account)
    print(f"account    {b.account}")
    print(f"total      {format_credits(b.total)}")
    print(f"held       {format_credits(b.held)}")
    print(f"available  {format_credits(b.available)}")
    return 0


# --- ledger ---------------------------------------------------------------------------------


def _register_ledger(admin: argparse._SubParsersAction) -> None:
    p = admin.add_parser("ledger", help="an account's ledger, newest first")
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("--limit", type=_positive, default=50, metavar="N", help="default 50")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=wallet_command("ledger", _ledger))


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


async def _ledger(wallet: Wallet, args: argparse.Namespace) -> int:
    entries = await wallet.entries(args.account, limit=args.limit)
    if args.json:
        for entry in entries:
            print(json.dumps(_entry_json(entry), ensure_ascii=False, sort_keys=True))
        return 0
    if not entries:
        print(f"no ledger entries for {args.account}")
        return 0
    for entry in entries:
        print(_entry_line(entry))
    return 0


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "account": entry.account,
        "kind": entry.kind,
        "amount": format_credits(entry.amount),
        "amount_milli": entry.amount,
        "key": entry.key,
        "reason": entry.reason,
        "created_at": entry.created_at.isoformat(),
        "ref": entry.ref,
        "meta": entry.meta,
    }


def _entry_line(entry: Entry) -> str:
    amount = format_credits(entry.amount)
    if entry.amount > 0:
        amount = "+" + amount
    parts = [
        entry.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        entry.kind.ljust(7),
        amount.rjust(12),
        entry.reason or "-",
        f"[{entry.id}]",
    ]
    if entry.ref:
        parts.append(f"ref={entry.ref}")
    if entry.meta:
        parts.append(" ".join(f"{k}={v}" for k, v in sorted(entry.meta.items())))
    return "  ".join(parts)


ADMIN_COMMANDS: dict[str, Registrar] = {
    "credit": _register_credit,
    "balance": _register_balance,
    "ledger": _register_ledger,
}
