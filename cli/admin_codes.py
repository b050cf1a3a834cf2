"""`creditbot admin codes ...`: make, list and revoke redemption codes.

    creditbot admin codes create (--credits N | --cny X) --count K [--expires DATE] [--out F.csv]
    creditbot admin codes list [--status active|used|revoked|expired] [--json]
    creditbot admin codes revoke CODE|ID

`create` prints the codes once (as CSV: code, credits, expires) or writes them to `--out`;
the store keeps only their hashes, so keep the file safe: it is what a buyer pays for.
`--expires 2027-01-31` means valid through that day (UTC).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime

from billing.money import format_credits, parse_credits
from billing.wallet.base import Wallet
from bot import codes
from bot.store.base import Store
from cli.admin_common import Refused, bank_command, parse_moment


def register_admin(admin: argparse._SubParsersAction) -> None:
    parser = admin.add_parser("codes", help="redemption codes: create, list, revoke")
    sub = parser.add_subparsers(dest="codes_command", metavar="ACTION")

    create = sub.add_parser("create", help="make codes and write them as CSV")
    amount = create.add_mutually_exclusive_group(required=True)
    amount.add_argument("--credits", help='credits per code, e.g. "10000"')
    amount.add_argument("--cny", help='value per code in CNY (1 CNY = 10,000 credits), e.g. "9.9"')
    create.add_argument("--count", type=int, required=True, metavar="K")
    create.add_argument("--expires", type=parse_moment, metavar="DATE", help="valid through DATE")
    create.add_argument("--out", metavar="FILE.csv", help="write here instead of stdout")
    create.add_argument("--batch", default="", help="a label for this batch (default: the time)")
    create.set_defaults(func=bank_command("codes create", _create))

    lister = sub.add_parser("list", help="every code with its status (never the code itself)")
    lister.add_argument("--status", choices=["active", "used", "revoked", "expired"])
    lister.add_argument("--json", action="store_true", help="one JSON object per line")
    lister.set_defaults(func=bank_command("codes list", _list))

    revoke = sub.add_parser("revoke", help="make a code unredeemable")
    revoke.add_argument("code", metavar="CODE|ID")
    revoke.set_defaults(func=bank_command("codes revoke", _revoke))

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


async def _create(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    amount = codes.parse_cny(args.cny) if args.cny is not None else parse_credits(args.credits)
    if amount <= 0:
        raise Refused("the value of a code must be positive")
    if args.expires is not None and args.expires <= datetime.now(UTC):
        raise Refused(f"--expires {args.expires:%Y-%m-%d %H:%M} UTC is already past")
    if not 0 < args.count <= 100_000:
        raise Refused("--count must be between 1 and 100000")
    made = await codes.create_codes(
        store, amount, args.count, expires_at=args.expires, batch=args.batch
    )
    if args.out:
        codes.write_csv(args.out, made)
        print(
            f"wrote {len(made)} codes of {format_credits(amount)} credits to {args.out}",
            file=sys.stderr,
        )
    else:
        out = csv.writer(sys.stdout)
        out.writerow(["code", "credits", "expires"])
        for c in made:
            out.writerow(
                [c.code, format_credits(c.amount), c.expires_at.isoformat() if c.expires_at else ""]
            )
    return 0


async def _list(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    infos = [i for i in await codes.list_codes(store) if args.status in (None, i.status)]
    for i in infos:
        if args.json:
            row = {
                "id": i.id,
                "credits": format_credits(i.amount),
                "amount_milli": i.amount,
                "status": i.status,
                "batch": i.batch,
                "created_at": i.created_at.isoformat(),
                "expires_at": i.expires_at.isoformat() if i.expires_at else None,
                "used_by": i.used_by,
                "used_at": i.used_at.isoformat() if i.used_at else None,
            }
            print(json.dumps(row, ensure_ascii=False, sort_keys=True))
        else:
            expires = i.expires_at.strftime("%Y-%m-%d %H:%M") if i.expires_at else "never"
            used = f"  by {i.used_by} at {i.used_at:%Y-%m-%d %H:%M}" if i.used_by else ""
            print(
                f"{i.id}  {i.status:<8} {format_credits(i.amount):>10} credits  "
                f"batch {i.batch or '-'}  expires {expires}{used}"
            )
    if not infos and not args.json:
        print("no codes")
    return 0


async def _revoke(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    try:
        info = await codes.revoke_code(store, args.code)
    except codes.CodeError as exc:
        if exc.kind == "used":
            raise Refused(f"code {args.code} was already redeemed; it cannot be revoked") from exc
        raise Refused(f"no code {args.code!r}") from exc
    print(f"revoked code {info.id} ({format_credits(info.amount)} credits)")
    return 0
