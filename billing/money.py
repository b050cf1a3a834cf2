"""Credits as integers: parsing and display, exact to the millicredit.

The wallet counts millicredits (1 credit = 1,000) so that every charge is an integer and no
rounding ever happens twice. Users see credits with up to three decimals and no trailing
zeros ("5.2", "302.25", "2000"). 1 CNY = 10,000 credits, so one millicredit is 1e-7 CNY.
There is no float anywhere here: text goes straight to integers, ratios stay Fractions.

Money paid in CNY is counted in fen (1 fen = 100 credits = 100,000 millicredits), and every
conversion between CNY text, fen and millicredits is written once, here: `parse_fen`,
`format_fen`, `fen_to_milli`, and the one smallest top-up a user may ask for, `topup_fen`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

MILLI_PER_CREDIT = 1000
CREDITS_PER_CNY = 10_000
MILLI_PER_CNY = MILLI_PER_CREDIT * CREDITS_PER_CNY
MILLI_PER_FEN = MILLI_PER_CNY // 100  # 1 fen = 100 credits

# A top-up a user asks for (WeChat Pay): at least 1 CNY, since a smaller one is not worth a
# payment, and at most 5,000 CNY, the most one WeChat Pay order of ours carries.
MIN_TOPUP_FEN = 100
MAX_TOPUP_FEN = 500_000

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


def fen_to_milli(fen: int) -> int:
    """Fen -> millicredits, exactly (990 fen = 9.90 CNY = 99,000 credits)."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"expected an integer number of fen, got {type(fen).__name__}")
    return fen * MILLI_PER_FEN


def parse_fen(text: str, *, most: int | None = MAX_TOPUP_FEN) -> int:
    """A CNY amount as people type it ("10", "9.9", "¥0.5", "12.34元") -> fen, exactly.

    ASCII digits with at most two decimals, more than zero, and at most `most` fen (one
    top-up's worth unless the caller says otherwise, None: no limit); ValueError else.
    """
    cleaned = text.strip().lstrip("¥￥").removesuffix("元").removesuffix("CNY").strip()
    whole, _, frac = cleaned.partition(".")
    if (
        not whole.isascii()
        or not whole.isdigit()
        or (frac and (not frac.isascii() or not frac.isdigit() or len(frac) > 2))
    ):
        raise ValueError(f"not an amount in CNY (up to 2 decimals): {text!r}")
    fen = int(whole) * 100 + int((frac or "0").ljust(2, "0"))
    if fen <= 0:
        raise ValueError("the amount must be more than 0 CNY")
    if most is not None and fen > most:
        raise ValueError(f"the amount must be at most {format_fen(most)} CNY")
    return fen


def topup_fen(text: str) -> int:
    """A top-up a user asked for, in fen: MIN_TOPUP_FEN to MAX_TOPUP_FEN (see `parse_fen`)."""
    fen = parse_fen(text)
    if fen < MIN_TOPUP_FEN:
        raise ValueError(f"the smallest top-up is {format_fen(MIN_TOPUP_FEN)} CNY")
    return fen


def format_fen(fen: int) -> str:
    """Fen -> CNY with two decimals, as prices are shown: 990 -> "9.90"."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"expected an integer number of fen, got {type(fen).__name__}")
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


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
