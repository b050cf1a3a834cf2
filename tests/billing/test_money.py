"""Credits as people type and read them, exact to the millicredit."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import (
    CREDITS_PER_CNY,
    MAX_TOPUP_FEN,
    MILLI_PER_CREDIT,
    MILLI_PER_FEN,
    MIN_TOPUP_FEN,
    fen_to_milli,
    format_cny,
    format_credits,
    format_decimal,
    format_fen,
    parse_credits,
    parse_fen,
    topup_fen,
)


def test_units_are_the_published_ones() -> None:
    assert MILLI_PER_CREDIT == 1000
    assert CREDITS_PER_CNY == 10_000


@pytest.mark.parametrize(
    ("milli", "shown"),
    [
        (5200, "5.2"),
        (302250, "302.25"),
        (2_000_000, "2000"),
        (1, "0.001"),
        (0, "0"),
        (-1500, "-1.5"),
        (1_000_010, "1000.01"),
    ],
)
def test_credits_show_up_to_three_decimals_without_trailing_zeros(milli: int, shown: str) -> None:
    assert format_credits(milli) == shown


@pytest.mark.parametrize(
    ("text", "milli"),
    [
        ("5", 5000),
        ("5.2", 5200),
        ("302.25", 302250),
        ("0.001", 1),
        ("2000", 2_000_000),
        (" 7.50 ", 7500),
        (3, 3000),
        ("+1", 1000),
        ("-0", 0),
    ],
)
def test_typed_credits_become_exact_millicredits(text: str | int, milli: int) -> None:
    assert parse_credits(text) == milli


@pytest.mark.parametrize(
    "text",
    ["1.2345", "0.0001", "-1", "-0.5", -2, "", " ", "abc", "1e3", "1,000", "1_000", "nan", "inf",
     ".5", "5.", "1.2.3", "١٢", True, 1.5, None],
)  # fmt: skip
def test_garbage_too_many_decimals_and_negatives_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_credits(text)  # type: ignore[arg-type]


def test_negative_credits_only_when_asked_for() -> None:
    assert parse_credits("-1.5", allow_negative=True) == -1500
    assert parse_credits(-2, allow_negative=True) == -2000
    with pytest.raises(ValueError, match="3 decimals"):
        parse_credits("-1.0001", allow_negative=True)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_what_is_shown_parses_back_to_the_same_millicredits(milli: int) -> None:
    assert parse_credits(format_credits(milli), allow_negative=True) == milli


@pytest.mark.parametrize(
    ("milli", "cny"),
    [(5_200_000, "0.52"), (2_000_000, "0.2"), (1, "0.0000001"), (10_000_000, "1"), (0, "0")],
)
def test_cny_is_exact_to_seven_decimals(milli: int, cny: str) -> None:
    assert format_cny(milli) == cny


def test_format_decimal_is_exact_or_refuses() -> None:
    assert format_decimal(Fraction(355, 1000)) == "0.355"
    assert format_decimal(Decimal("177.50")) == "177.5"
    assert format_decimal(Fraction(355, 10**7)) == "0.0000355"
    with pytest.raises(ValueError):
        format_decimal(Fraction(1, 3))


def test_formatting_refuses_non_integers() -> None:
    with pytest.raises(TypeError):
        format_credits(1.5)  # type: ignore[arg-type]


# --- CNY paid in fen ---------------------------------------------------------------------------


def test_a_fen_is_a_hundred_credits() -> None:
    assert MILLI_PER_FEN == 100_000
    assert fen_to_milli(990) == parse_credits("99000")  # 9.90 CNY
    assert fen_to_milli(100) == MILLI_PER_CREDIT * CREDITS_PER_CNY  # 1 CNY
    with pytest.raises(TypeError):
        fen_to_milli(9.9)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fen_to_milli(True)


def test_cny_is_parsed_to_fen_once_for_every_caller() -> None:
    assert parse_fen("¥5") == parse_fen("5元") == parse_fen(" 5 CNY") == 500
    assert parse_fen("5000") == MAX_TOPUP_FEN
    with pytest.raises(ValueError):
        parse_fen("5000.01")
    assert parse_fen("5000.01", most=None) == 500_001  # a code's value has no upper limit
    for bad in ("0", "0.00", "-1", "1.234", "1e3", "１０", "²", "", "¥"):
        with pytest.raises(ValueError):
            parse_fen(bad, most=None)
    assert [format_fen(f) for f in (990, 1, 100, 500_000)] == ["9.90", "0.01", "1.00", "5000.00"]


def test_the_smallest_top_up_is_one_yuan() -> None:
    assert MIN_TOPUP_FEN == 100
    assert topup_fen("1") == 100 and topup_fen("9.9") == 990 and topup_fen("5000") == 500_000
    for bad in ("0.99", "0.5", "0.01", "5000.01", "ten"):
        with pytest.raises(ValueError):
            topup_fen(bad)
