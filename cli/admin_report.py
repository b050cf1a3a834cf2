"""`creditbot admin report --from DATE --to DATE`: what was sold, what it cost, what is left.

Read straight from the ledger (both dates inclusive, UTC):
- per model: replies or images, input and output tokens, credits charged (capture entries and
  their meta, which is what each user can check in /usage);
- top-ups received by source (redemption codes, WeChat Pay, Telegram Stars) and their value in
  CNY at 10,000 credits per CNY, and credits taken back for refunded payments; grants and other
  credits are listed apart: they are not income;
- refunds and compensations;
- the upstream cost at OpenAI's USD list price (billing/prices.toml, converted at its
  cny_per_usd) and the margin: credits charged, less refunds, less upstream cost. Models with
  no USD price (Midjourney) are reported without a cost.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from billing.money import CREDITS_PER_CNY, MILLI_PER_CREDIT, format_cny, format_credits
from billing.pricing import PriceList, UnknownModel
from billing.wallet.base import CAPTURE, CREDIT, DEBIT, Wallet
from bot.settings import get_settings
from bot.store.base import Store
from cli.admin_common import all_entries, bank_command, parse_day

TOPUP_SOURCES = {"code": "redemption codes", "wxpay": "WeChat Pay", "tgstars": "Telegram Stars"}
MILLION = Decimal(1_000_000)


@dataclass
class ModelLine:
    model: str
    count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    charged: int = 0  # millicredits
    cost_usd: Decimal | None = Decimal(0)  # None: no USD list price


@dataclass
class Report:
    start: datetime
    end: datetime  # exclusive
    models: dict[str, ModelLine] = field(default_factory=dict)
    topups: dict[str, list[int]] = field(default_factory=dict)  # source -> [count, milli]
    other_credits: dict[str, list[int]] = field(default_factory=dict)  # reason -> [count, milli]
    refunds: int = 0  # millicredits credited back with a ref to an entry
    refund_count: int = 0
    reversed: int = 0  # millicredits taken back from refunded payments (positive)
    reversed_count: int = 0
    cny_per_usd: Decimal = Decimal("7.1")

    @property
    def charged(self) -> int:
        return sum(m.charged for m in self.models.values())

    @property
    def topup_total(self) -> int:
        return sum(v[1] for v in self.topups.values())

    @property
    def cost_usd(self) -> Decimal:
        return sum((m.cost_usd or Decimal(0) for m in self.models.values()), Decimal(0))

    @property
    def cost_milli(self) -> int:
        """Upstream cost in millicredits (rounded to the nearest millicredit, for reporting)."""
        value = self.cost_usd * self.cny_per_usd * CREDITS_PER_CNY * MILLI_PER_CREDIT
        return int(value.to_integral_value())

    @property
    def margin(self) -> int:
        return self.charged - self.refunds - self.cost_milli

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "models": {
                m.model: {
                    "count": m.count,
                    "prompt_tokens": m.prompt_tokens,
                    "completion_tokens": m.completion_tokens,
                    "cached_tokens": m.cached_tokens,
                    "charged_milli": m.charged,
                    "cost_usd": None if m.cost_usd is None else str(m.cost_usd),
                }
                for m in self.models.values()
            },
            "topups": {k: {"count": c, "milli": v} for k, (c, v) in self.topups.items()},
            "other_credits": {
                k: {"count": c, "milli": v} for k, (c, v) in self.other_credits.items()
            },
            "refunds_milli": self.refunds,
            "reversed_milli": self.reversed,
            "charged_milli": self.charged,
            "topups_milli": self.topup_total,
            "cost_usd": str(self.cost_usd),
            "cost_milli": self.cost_milli,
            "margin_milli": self.margin,
        }


def _usd_cost(prices: PriceList, model: str, meta: dict[str, Any]) -> Decimal | None:
    try:
        price = prices.get(model)
    except UnknownModel:
        return None
    if price.kind != "chat" or price.usd_input is None or price.usd_output is None:
        return None
    prompt = int(meta.get("prompt_tokens") or 0)
    cached = int(meta.get("cached_tokens") or 0)
    completion = int(meta.get("completion_tokens") or 0)
    cached_price = price.usd_cached_input if price.usd_cached_input is not None else price.usd_input
    return (
        (prompt - cached) * price.usd_input + cached * cached_price + completion * price.usd_output
    ) / MILLION


async def build_report(wallet: Wallet, prices: PriceList, start: datetime, end: datetime) -> Report:
    """Sum the ledger entries created in [start, end)."""
    report = Report(start, end, cny_per_usd=prices.cny_per_usd or Decimal("7.1"))
    for account in await wallet.accounts():
        for e in await all_entries(wallet, account):
            if not start <= e.created_at < end:
                continue
            if e.kind == CAPTURE:
                meta = e.meta or {}
                model = str(meta.get("model") or "unknown")
                line = report.models.setdefault(model, ModelLine(model))
                line.count += 1
                line.charged += -e.amount
                line.prompt_tokens += int(meta.get("prompt_tokens") or 0)
                line.completion_tokens += int(meta.get("completion_tokens") or 0)
                line.cached_tokens += int(meta.get("cached_tokens") or 0)
                cost = _usd_cost(prices, model, meta)
                if cost is None:
                    line.cost_usd = None
                elif line.cost_usd is not None:
                    line.cost_usd += cost
            elif e.kind == DEBIT:
                if e.key.startswith("reverse:"):
                    report.reversed += -e.amount
                    report.reversed_count += 1
            elif e.kind == CREDIT:
                source = e.key.split(":", 1)[0]
                if source in ("link", "drain"):
                    # Credits moving between one person's linked wallets (/link, and
                    # Accounts.settle's moves of what reached a linked-away account).
                    continue
                if source in TOPUP_SOURCES:
                    bucket = report.topups.setdefault(source, [0, 0])
                elif e.ref is not None:
                    report.refunds += e.amount
                    report.refund_count += 1
                    continue
                else:
                    bucket = report.other_credits.setdefault(e.reason or source, [0, 0])
                bucket[0] += 1
                bucket[1] += e.amount
    return report


def register_admin(admin: argparse._SubParsersAction) -> None:
    p = admin.add_parser("report", help="sales, top-ups, upstream cost and margin for a period")
    p.add_argument("--from", dest="start", type=parse_day, required=True, metavar="DATE")
    p.add_argument("--to", dest="end", type=parse_day, required=True, metavar="DATE")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")
    p.set_defaults(func=bank_command("report", _report))


def _period(start: date, end: date) -> tuple[datetime, datetime]:
    if end < start:
        raise ValueError("--to is before --from")
    return datetime.combine(start, time(), UTC), datetime.combine(end + timedelta(1), time(), UTC)


async def _report(wallet: Wallet, store: Store, args: argparse.Namespace) -> int:
    start, end = _period(args.start, args.end)
    prices = PriceList.load(get_settings().prices_file)
    r = await build_report(wallet, prices, start, end)
    if args.json:
        print(json.dumps(r.as_json(), ensure_ascii=False, sort_keys=True))
        return 0
    print(f"creditbot report {args.start} .. {args.end} (UTC, inclusive)")
    print()
    print(
        f"{'model':<24}{'count':>8}{'input tok':>12}{'output tok':>12}{'credits':>14}"
        f"{'cost USD':>12}"
    )
    for m in sorted(r.models.values(), key=lambda m: m.model):
        cost = "n/a" if m.cost_usd is None else f"{m.cost_usd:.4f}"
        print(
            f"{m.model:<24}{m.count:>8}{m.prompt_tokens:>12}{m.completion_tokens:>12}"
            f"{format_credits(m.charged):>14}{cost:>12}"
        )
    print(f"{'total':<24}{'':>32}{format_credits(r.charged):>14}{r.cost_usd:>12.4f}")
    print()
    print("top-ups received")
    for source, (count, milli) in sorted(r.topups.items()):
        print(
            f"  {TOPUP_SOURCES[source]:<20}{count:>6}  {format_credits(milli):>14} credits"
            f"  = {format_cny(milli)} CNY"
        )
    print(
        f"  {'total':<20}{'':>6}  {format_credits(r.topup_total):>14} credits"
        f"  = {format_cny(r.topup_total)} CNY"
    )
    if r.reversed_count:
        print(
            f"  {'refunded payments':<20}{r.reversed_count:>6}  "
            f"{format_credits(-r.reversed):>14} credits taken back"
        )
    if r.other_credits:
        print("other credits (not income)")
        for reason, (count, milli) in sorted(r.other_credits.items()):
            print(f"  {reason[:20]:<20}{count:>6}  {format_credits(milli):>14} credits")
    print()
    print(f"charged            {format_credits(r.charged):>14} credits")
    print(f"refunds            {format_credits(-r.refunds):>14} credits ({r.refund_count})")
    print(
        f"upstream cost      {format_credits(-r.cost_milli):>14} credits "
        f"({r.cost_usd:.4f} USD at {r.cny_per_usd} CNY/USD)"
    )
    print(f"margin             {format_credits(r.margin):>14} credits = {format_cny(r.margin)} CNY")
    return 0
