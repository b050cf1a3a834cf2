"""`creditbot admin find|grant|refund|compensate`: an operator looking after one user.

    creditbot admin find QUERY                 by platform id ("42", "telegram:42") or name
    creditbot admin grant USER CREDITS [--reason TEXT] [--key KEY]
    creditbot admin refund ENTRY [--reason TEXT]
    creditbot admin compensate ENTRY CREDITS --reason TEXT

USER is an identity ("telegram:42", following /link) or a wallet account. `refund` gives back
what a charge took; `compensate` credits a chosen amount. Both are linked to the entry by its
ref and happen once per entry (also against the in-chat /refund): the second attempt says
which entry already made it good.

Names: the core records each user's display name with `remember_name`, so `find` can search
them; ids are always searchable through the wallet's accounts.
"""

from __future__ import annotations

import argparse
import json
import uuid

from billing.money import format_credits, parse_credits
from billing.wallet.base import CAPTURE, Entry, Wallet
from bot.accounts import Accounts, remember_name
from bot.store.base import Store
from bot.store.keys import NAMES, credit_account_key, name_key, refund_key
from cli.admin_common import Refused, bank_command

__all__ = ["register_admin", "remember_name"]


def register_admin(admin: argparse._SubParsersAction) -> None:
    p = admin.add_parser("find", help="find users by platform id or name")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=bank_command("find", _find))

    p = admin.add_parser("grant", help="give a user credits (a gift, not a payment)")
    p.add_argument("user", metavar="USER")
    p.add_argument("credits", metavar="CREDITS")
    p.add_argument("--reason", default="grant", help='shown in the ledger (default "grant")')
    p.add_argument("--key", help="idempotency key: the same key again grants nothing more")
    p.set_defaults(func=bank_command("grant", _grant))

    p = admin.add_parser("refund", help="give back what a charge took (once per entry)")
    p.add_argument("entry", metavar="ENTRY")
    p.add_argument("--reason", default="", help="shown in the ledger")
    p.set_defaults(func=bank_command("refund", _refund))

    p = admin.add_parser("compensate", help="credit an amount for a wrong entry (once per entry)")
    p.add_argument("entry", metavar="ENTRY")
    p.add_argument("credits", metavar="CREDITS")
    p.add_argument("--reason", required=True, help="shown in the ledger")
    p.set_defaults(func=bank_command("compensate", _compensate))


async def _find(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    query = args.query.strip()
    q = query.lower()
    found: dict[str, str] = {}  # identity or account -> name
    for ident in await store.smembers(NAMES):
        name = await store.get(name_key(ident)) or ""
        if q in name.lower() or _id_matches(ident, q):
            found[ident] = name
    for account in await wallet.accounts():
        if _id_matches(account, q) and account not in found:
            found[account] = await store.get(name_key(account)) or ""
    accounts = Accounts(store, wallet)
    rows = []
    for ident in sorted(found):
        account = await accounts.resolve_name(ident)
        b = await wallet.balance(account)
        rows.append(
            {
                "identity": ident,
                "name": found[ident],
                "account": account,
                "total": format_credits(b.total),
                "held": format_credits(b.held),
                "available": format_credits(b.available),
            }
        )
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False, sort_keys=True))
        else:
            linked = f" -> {row['account']}" if row["account"] != row["identity"] else ""
            name = f" ({row['name']})" if row["name"] else ""
            print(
                f"{row['identity']}{name}{linked}: available {row['available']}, "
                f"held {row['held']}, total {row['total']}"
            )
    if not rows:
        print(f"nobody matches {query!r}")
        return 1
    return 0


def _id_matches(ident: str, q: str) -> bool:
    """ "42" finds "telegram:42" and "wechat:42"; "telegram:42" finds itself."""
    ident = ident.lower()
    return ident == q or ident.split(":", 1)[-1] == q


async def _grant(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    amount = parse_credits(args.credits)
    if amount <= 0:
        raise Refused("grant a positive amount")
    accounts = Accounts(store, wallet)
    account = await accounts.resolve_name(args.user)
    key = args.key or f"admin:grant:{uuid.uuid4().hex}"
    # The first run's account is pinned (a --key rerun after a /link credits nothing more),
    # and the credits follow the user if a /link moved them meanwhile.
    entry = await accounts.credit(
        account,
        amount,
        key,
        args.reason.strip() or "grant",
        meta={"by": "admin-cli"},
        pin=credit_account_key(key),
    )
    account = await accounts.moved_to(entry.account) or entry.account
    b = await wallet.balance(account)
    print(
        f"granted {format_credits(entry.amount)} to {account} (entry {entry.id}); "
        f"available {format_credits(b.available)}"
    )
    return 0


async def _make_good(
    wallet: Wallet, store: Store, entry_id: str, amount: int | None, reason: str
) -> tuple[Entry, Entry]:
    entry = await wallet.get_entry(entry_id.lstrip("#"))
    if entry is None:
        raise Refused(f"no ledger entry {entry_id!r}")
    if entry.kind != CAPTURE:
        # A /link move or a payment reversal is not a charge: making it good would create
        # credits nobody paid for. Use `grant` for a gift that is not tied to a charge.
        raise Refused(
            f"entry {entry.id} is a {entry.kind}, not a charge: only charges can be made good"
            " (use grant for a gift)"
        )
    if amount is None:
        amount = -entry.amount
    if amount <= 0:
        raise Refused("the amount must be positive")
    done = await store.get(refund_key(entry.id))
    if done:
        raise Refused(f"entry {entry.id} was already made good by entry {done}")
    # To the charged account; the credits follow the user if they /link'ed since.
    made = await Accounts(store, wallet).credit(
        entry.account,
        amount,
        refund_key(entry.id),
        reason or f"compensation for entry {entry.id}",
        ref=entry.id,
        meta={"by": "admin-cli"},
    )
    await store.set(refund_key(entry.id), made.id)
    if made.ref != entry.id or made.amount != amount:
        raise Refused(f"entry {entry.id} was already made good by entry {made.id}")
    return entry, made


async def _refund(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    entry, made = await _make_good(wallet, store, args.entry, None, args.reason.strip())
    print(
        f"refunded {format_credits(made.amount)} to {entry.account} for entry {entry.id} "
        f"(entry {made.id})"
    )
    return 0


async def _compensate(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    amount = parse_credits(args.credits)
    reason = args.reason.strip()
    if not reason:
        raise Refused("--reason must not be empty")
    entry, made = await _make_good(wallet, store, args.entry, amount, reason)
    print(
        f"compensated {format_credits(made.amount)} to {entry.account} for entry {entry.id} "
        f"(entry {made.id})"
    )
    return 0
