"""The operator's billing commands: prices, tokens, cost and admin, as they are typed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.settings import get_settings
from cli import main
from tests.billing.test_tokens import COOKBOOK_MESSAGES

VENV_SCRIPT = Path(sys.executable).with_name("creditbot")


@pytest.fixture(autouse=True)
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Each test: shipped prices, a wallet file of its own, settings read afresh."""
    monkeypatch.delenv("PRICES_FILE", raising=False)
    wallet_url = f"sqlite+aiosqlite:///{tmp_path / 'wallet.db'}"
    monkeypatch.setenv("WALLET_URL", wallet_url)
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    get_settings.cache_clear()
    yield {"WALLET_URL": wallet_url}
    get_settings.cache_clear()


def run_script(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real console script, as an operator runs it."""
    command = [str(VENV_SCRIPT)] if VENV_SCRIPT.exists() else [sys.executable, "-m", "cli"]
    return subprocess.run(
        [*command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def cli(
    capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(args))
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


# --- the real console script -----------------------------------------------------------------


def test_script_counts_the_cookbook_prompt_from_stdin() -> None:
    done = run_script("tokens", "--model", "gpt-4", "-", stdin=json.dumps(COOKBOOK_MESSAGES))
    assert (done.returncode, done.stdout, done.stderr) == (0, "129\n", "")


def test_script_prices_a_reply_in_display_format() -> None:
    # gpt-3.5-turbo: 129 + 1 tokens at 0.04 credits = 5.2 credits.
    done = run_script(
        "cost", "--model", "gpt-3.5-turbo", "--prompt-tokens", "129", "--completion-tokens", "1"
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "5.2\n", "")


def test_script_refuses_an_unknown_model_on_stderr_without_a_traceback() -> None:
    done = run_script(
        "cost", "--model", "gpt-4-32k", "--prompt-tokens", "1", "--completion-tokens", "1"
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert "gpt-4-32k" in done.stderr and "only the 8K gpt-4" in done.stderr
    assert "Traceback" not in done.stderr


# --- prices --------------------------------------------------------------------------------


def test_prices_table_can_be_held_against_the_published_page(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "prices")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["gpt-3.5-turbo"][1:] == ["16,385", "40", "-", "40", "0.004", "-", "0.004"]
    assert rows["gpt-4"][1:] == ["8,192", "2310", "-", "4260", "0.231", "-", "0.426"]
    assert rows["gpt-4o"][1:] == [
        "128,000",
        "177.5",
        "88.75",
        "710",
        "0.01775",
        "0.008875",
        "0.071",
    ]
    assert rows["gpt-5-nano"][1:4] == ["400,000", "3.55", "0.355"]
    assert rows["imagine"][1:] == ["2000", "0.2"]
    assert rows["upscale"][1:] == ["2000", "0.2"]
    assert "gpt-4-32k:" in rows
    assert "gpt-4o-2024-08-06" in rows  # the alias list is shown


def test_prices_file_replaces_the_shipped_list(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = tmp_path / "own.toml"
    own.write_text(
        '[models."gpt-4o"]\nencoding = "o200k_base"\ncontext_window = 128000\n'
        "input = 300\noutput = 900\n"
    )
    monkeypatch.setenv("PRICES_FILE", str(own))
    get_settings.cache_clear()
    code, out, _ = cli(capsys, "prices")
    assert code == 0 and str(own) in out
    assert "gpt-3.5-turbo" not in out
    code, out, _ = cli(
        capsys, "cost", "--model", "gpt-4o", "--prompt-tokens", "1", "--completion-tokens", "1"
    )
    assert (code, out) == (0, "1.2\n")


def test_a_broken_prices_file_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."gpt-4o"]\nencoding = "o200k_base"\n')
    monkeypatch.setenv("PRICES_FILE", str(bad))
    get_settings.cache_clear()
    code, out, err = cli(capsys, "prices")
    assert code == 1 and out == ""
    assert str(bad) in err and "context_window" in err


# --- tokens --------------------------------------------------------------------------------


def test_tokens_reads_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(COOKBOOK_MESSAGES), encoding="utf-8")
    assert cli(capsys, "tokens", "--model", "gpt-3.5-turbo-0301", str(path)) == (0, "127\n", "")
    assert cli(capsys, "tokens", "--model", "gpt-4o-2024-08-06", str(path)) == (0, "124\n", "")


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"role": "user", "content": "hi"}', "JSON array"),
        ("[]", "JSON array"),
        ('[{"content": "no role"}]', "'role'"),
        ('[{"role": "user", "content": 5}]', "must be a string"),
    ],
)
def test_tokens_refuses_malformed_input(
    capsys: pytest.CaptureFixture[str], stdin: str, message: str
) -> None:
    code, out, err = cli(capsys, "tokens", "--model", "gpt-4o", "-", stdin=stdin)
    assert code == 1 and out == ""
    assert err.startswith("creditbot tokens: error:") and message in err


def test_tokens_refuses_an_unknown_model_and_a_missing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "tokens", "--model", "gpt-4-turbo", "-", stdin="[]")
    assert code == 1 and "no price" in err
    code, _, err = cli(capsys, "tokens", "--model", "gpt-4o", str(tmp_path / "none.json"))
    assert code == 1 and "cannot read" in err


# --- cost ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--model", "gpt-4", "--prompt-tokens", "1", "--completion-tokens", "0"], "2.31"),
        (["--model", "gpt-4", "--prompt-tokens", "1000", "--completion-tokens", "0"], "2310"),
        (
            ["--model", "gpt-4o", "--prompt-tokens", "1000", "--completion-tokens", "1000",
             "--cached-tokens", "500"],
            "843.125",
        ),
        (["--model", "gpt-5-nano", "--prompt-tokens", "3", "--completion-tokens", "0",
          "--cached-tokens", "3"], "0.002"),
    ],
)  # fmt: skip
def test_cost_prints_a_bare_number(
    capsys: pytest.CaptureFixture[str], args: list[str], shown: str
) -> None:
    assert cli(capsys, "cost", *args) == (0, shown + "\n", "")


def test_cost_refuses_cached_tokens_beyond_the_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, "cost", "--model", "gpt-4o", "--prompt-tokens", "1", "--completion-tokens", "1",
        "--cached-tokens", "2",
    )  # fmt: skip
    assert code == 1 and out == "" and "cannot exceed" in err


def test_cost_refuses_a_negative_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["cost", "--model", "gpt-4o", "--prompt-tokens", "-1", "--completion-tokens", "1"])
    assert exited.value.code == 2
    assert "non-negative integer" in capsys.readouterr().err


# --- admin (against a SQLite wallet file from WALLET_URL) ------------------------------------


def test_admin_credit_shows_in_balance_and_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "admin", "credit", "telegram:42", "5.2", "--reason", "welcome")
    assert (code, err) == (0, "")
    assert "credited 5.2 to telegram:42" in out and "available 5.2" in out

    code, out, _ = cli(capsys, "admin", "balance", "telegram:42")
    assert code == 0
    assert out.split() == [
        "account",
        "telegram:42",
        "total",
        "5.2",
        "held",
        "0",
        "available",
        "5.2",
    ]

    code, out, _ = cli(capsys, "admin", "ledger", "telegram:42")
    assert code == 0
    [line] = out.splitlines()
    assert "+5.2" in line and "welcome" in line and "credit" in line


def test_admin_credit_with_the_same_key_credits_once(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        code, _, _ = cli(
            capsys, "admin", "credit", "wechat:o1", "100", "--reason", "top-up", "--key", "order-7"
        )
        assert code == 0
    code, out, _ = cli(capsys, "admin", "balance", "wechat:o1")
    assert "total      100\n" in out


def test_admin_compensation_is_linked_to_the_entry_it_makes_good(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli(capsys, "admin", "credit", "telegram:7", "10", "--reason", "top-up")
    code, out, _ = cli(capsys, "admin", "ledger", "telegram:7", "--json")
    first = json.loads(out)
    code, out, err = cli(
        capsys, "admin", "credit", "telegram:7", "0.052", "--reason", "overcharge",
        "--ref", first["id"],
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = cli(capsys, "admin", "ledger", "telegram:7", "--json", "--limit", "1")
    [line] = out.splitlines()
    newest = json.loads(line)
    assert newest["ref"] == first["id"]
    assert (newest["amount"], newest["amount_milli"]) == ("0.052", 52)

    code, _, err = cli(
        capsys, "admin", "credit", "telegram:8", "1", "--reason", "x", "--ref", first["id"]
    )
    assert code == 1 and "belongs to telegram:7" in err


@pytest.mark.parametrize("amount", ["1.2345", "-5", "0", "lots"])
def test_admin_credit_refuses_a_bad_amount(capsys: pytest.CaptureFixture[str], amount: str) -> None:
    code, out, err = cli(capsys, "admin", "credit", "telegram:1", amount, "--reason", "oops")
    assert code == 1 and out == ""
    assert err.startswith("creditbot admin credit: error:")


def test_admin_ledger_of_an_empty_account(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "admin", "ledger", "telegram:nobody")
    assert (code, out) == (0, "no ledger entries for telegram:nobody\n")


@pytest.mark.slow
def test_admin_from_the_console_script(settings_env: dict[str, str]) -> None:
    done = run_script("admin", "credit", "telegram:99", "2000", "--reason", "launch gift")
    assert done.returncode == 0, done.stderr
    done = run_script("admin", "balance", "telegram:99")
    assert "available  2000" in done.stdout


def test_more_admin_subcommands_plug_in_by_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import admin

    async def count(wallet: object, args: object) -> int:
        print(len(await wallet.accounts()))  # type: ignore[attr-defined]
        return 0

    def register_accounts(sub: object) -> None:
        p = sub.add_parser("accounts")  # type: ignore[attr-defined]
        p.set_defaults(func=admin.wallet_command("accounts", count))

    monkeypatch.setitem(admin.ADMIN_COMMANDS, "accounts", register_accounts)
    cli(capsys, "admin", "credit", "telegram:5", "1", "--reason", "x")
    assert cli(capsys, "admin", "accounts") == (0, "1\n", "")
