"""The operator's commands and amounts no account can hold: `creditbot admin grant`, `credit`
and `codes create` refuse them with one clear line and exit 1, changing nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing import MAX_TOTAL
from billing.money import format_credits
from bot.settings import get_settings
from tests.business.test_admin import Run, make_cli, use

HUGE = "1" + "0" * 30  # credits


@pytest.fixture
def cli(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> Iterator[Run]:
    yield make_cli(sqlite_url, monkeypatch, capsys)
    get_settings.cache_clear()


async def _balance(wallet, store, account: str) -> tuple[int, int]:
    return (await wallet.balance(account)).total, len(await wallet.entries(account))


def test_a_huge_grant_or_credit_is_refused_in_one_line(cli: Run, sqlite_url: str) -> None:
    limit = format_credits(MAX_TOTAL)
    for argv in (
        ("grant", "telegram:42", HUGE),
        ("credit", "telegram:42", HUGE, "--reason", "typo"),
    ):
        code, out, err = cli(*argv)
        assert code == 1 and out == ""
        assert f"cannot take {HUGE} more credits" in err and f"at most {limit} credits" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert use(sqlite_url, _balance, "telegram:42") == (0, 0)


def test_a_grant_stops_exactly_at_the_bound(cli: Run, sqlite_url: str) -> None:
    code, _, _ = cli("grant", "telegram:7", format_credits(MAX_TOTAL - 1))
    assert code == 0
    code, _, err = cli("grant", "telegram:7", "0.002")
    assert code == 1 and "cannot take 0.002 more credits" in err
    code, out, _ = cli("grant", "telegram:7", "0.001")
    assert code == 0 and f"available {format_credits(MAX_TOTAL)}" in out
    assert use(sqlite_url, _balance, "telegram:7") == (MAX_TOTAL, 2)


def test_codes_worth_more_than_an_account_holds_are_not_made(cli: Run) -> None:
    code, out, err = cli("codes", "create", "--credits", HUGE, "--count", "1")
    assert code == 1 and out == "" and "a code is worth at most" in err
    code, out, _ = cli("codes", "list")
    assert code == 0 and out.strip() == "no codes"
