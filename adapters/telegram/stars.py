"""Telegram Stars packs and invoice payloads: what a pack costs and what a payment is worth.

The operator sets `TELEGRAM_STARS_PACKS` as "stars:credits,..." (for example "50:10000").
An invoice's payload names the pack and the buyer, so a pre-checkout query and the payment that
follows can both be checked against the packs on offer before any credit moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.money import parse_credits

CURRENCY = "XTR"
_PREFIX = "xtr1"


@dataclass(frozen=True, slots=True)
class StarsPack:
    """`stars` Telegram Stars buy `credits_milli` millicredits."""

    stars: int
    credits_milli: int


def parse_packs(text: str) -> list[StarsPack]:
    """Parse "stars:credits,..."; ValueError with the offending item on anything malformed."""
    packs: list[StarsPack] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        stars, sep, credits = item.partition(":")
        try:
            pack = StarsPack(int(stars.strip()), parse_credits(credits.strip()))
        except ValueError:
            pack = None
        if not sep or pack is None or pack.stars <= 0 or pack.credits_milli <= 0:
            raise ValueError(f"TELEGRAM_STARS_PACKS: {item!r} is not 'stars:credits'")
        packs.append(pack)
    return packs


def encode_payload(pack: StarsPack, user_id: int) -> str:
    """The invoice payload (<= 128 bytes): format version, pack and buyer."""
    return f"{_PREFIX}:{pack.stars}:{pack.credits_milli}:{user_id}"


@dataclass(frozen=True, slots=True)
class Purchase:
    """A decoded payload."""

    pack: StarsPack
    user_id: int


def decode_payload(payload: str) -> Purchase | None:
    """The purchase a payload names, or None if it is not one of ours."""
    parts = payload.split(":")
    if len(parts) != 4 or parts[0] != _PREFIX:
        return None
    try:
        stars, milli, user = (int(p) for p in parts[1:])
    except ValueError:
        return None
    return Purchase(StarsPack(stars, milli), user)


def check_purchase(
    payload: str,
    *,
    currency: str,
    total_amount: int,
    user_id: int,
    packs: list[StarsPack] | None,
) -> Purchase | None:
    """The purchase if the payment matches its price, currency, buyer and a pack on offer.

    `packs=None` skips the last check: a payment already made honours the pack it was sold as,
    even if the operator changed the packs since.
    """
    purchase = decode_payload(payload)
    if purchase is None or currency != CURRENCY or purchase.user_id != user_id:
        return None
    if total_amount != purchase.pack.stars or purchase.pack.stars <= 0:
        return None
    if purchase.pack.credits_milli <= 0 or (packs is not None and purchase.pack not in packs):
        return None
    return purchase
