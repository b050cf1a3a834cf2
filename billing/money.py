"""Credits as integers: parsing and display, exact to the millicredit.

The wallet counts millicredits (1 credit = 1,000) so that every charge is an integer and no
rounding ever happens twice. Users see credits with up to three decimals and no trailing
zeros ("5.2", "302.25", "2000"). 1 CNY = 10,000 credits, so one millicredit is 1e-7 CNY.
There is no float anywhere here: text goes straight to integers, ratios stay Fractions.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

MILLI_PER_CREDIT = 1000
CREDITS_PER_CNY = 10_000
MILLI_PER_CNY = MILLI_PER_CREDIT * CREDITS_PER_CNY

_CREDITS_RE = re.compile(r"([+-]?)(\d+)(?:\.(\d+))?", re.ASCII)


def parse_credits(text: str | int, *, allow_negative: bool = False) -> int:
    """Credits as typed by a person ("5", "5.2", "0.001") -> millicredits, exactly.

    Refuses more than three decimals (that would be a fraction of a millicredit), negative
    amounts unless `allow_negative`, and anything that is not a plain decimal number
    (exponents, thousands separators, "nan", bools).
    """
    if isinstance(text, bool):
        raise ValueError(f"not an amount of credits: {text!r}")
    if isinstance(text, int):
        if text < 0 and not allow_negative:
            raise ValueError(f"credits must not be negative: {text}")
        return text * MILLI_PER_CREDIT
    if not isinstance(text, str):
        raise ValueError(f"not an amount of credits: {text!r}")
    match = _CREDITS_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an amount of credits: {text!r}")
    sign, whole, frac = match.groups()
    frac = frac or ""
    if len(frac) > 3:
        raise ValueError(f"credits have at most 3 decimals (1 millicredit), got {text!r}")
    milli = int(whole) * MILLI_PER_CREDIT + int(frac.ljust(3, "0") or "0")
    if sign == "-":
        if milli and not allow_negative:
            raise ValueError(f"credits must not be negative: {text!r}")
        milli = -milli
    return milli


def format_credits(milli: int) -> str:
    """Millicredits -> credits for people: "5.2", "302.25", "2000", "-1.5"."""
    return _format_scaled(milli, MILLI_PER_CREDIT, 3)


def format_cny(milli: int) -> str:
    """Millicredits -> yuan, exact to seven decimals without trailing zeros ("0.52")."""
    return _format_scaled(milli, MILLI_PER_CNY, 7)


def format_decimal(value: Fraction | Decimal | int, max_places: int = 12) -> str:
    """An exact rational as a plain decimal ("177.5", "0.0000355"), never rounded.

    Raises ValueError if the value needs more than `max_places` decimals (or never ends),
    because a price table that silently rounds is a price table nobody can check.
    """
    q = Fraction(value)
    scale = 10**max_places
    scaled = q * scale
    if scaled.denominator != 1:
        raise ValueError(f"{q} has no exact decimal form within {max_places} places")
    return _format_scaled(scaled.numerator, scale, max_places)


def _format_scaled(units: int, per_one: int, places: int) -> str:
    if isinstance(units, bool) or not isinstance(units, int):
        raise TypeError(f"expected an integer amount, got {type(units).__name__}")
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), per_one)
    text = f"{sign}{whole}"
    if frac:
        text += "." + str(frac).rjust(places, "0").rstrip("0")
    return text
