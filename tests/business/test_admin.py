"""The operator's commands: `creditbot admin codes|find|grant|refund|compensate|report|check`.

Each test runs the real command line in this process against a real wallet and store.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import billing
from billing.pricing import PriceList
from billing.wallet.base import CAPTURE
from bot.accounts import Accounts
from bot.codes import CodeError, redeem_code
from bot.settings import get_settings
from bot.store import open_store
from cli import main
from cli.admin_users import remember_name

Run = Callable[..., tuple[int, str, str]]


def use(url: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run `await fn(wallet, store, *args)` on a fresh wallet and store at `url`."""

    async def go() -> Any:
        wallet = await billing.open_wallet(url)
        store = await open_store(url)
        try:
            return await fn(wallet, store, *args)
        finally:
            await store.close()
            await wallet.close()

    return asyncio.run(go())


def make_cli(url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Run:
    monkeypatch.setenv("WALLET_URL", url)
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["admin", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> Iterator[Run]:
    yield make_cli(sqlite_url, monkeypatch, capsys)
    get_settings.cache_clear()


@pytest.fixture
def any_cli(store_url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> Iterator[Run]:
    yield make_cli(store_url, monkeypatch, capsys)
    get_settings.cache_clear()


async def charge(wallet, account: str, amount: int, meta: dict[str, Any], key: str) -> str:
    hold = await wallet.hold(account, amount, key, ttl=600)
    entry = await wallet.capture(hold.id, amount, reason="chat", meta=meta)
    return entry.id


def test_codes_made_sold_redeemed_listed_and_revoked(
    cli: Run, sqlite_url: str, tmp_path: Path
) -> None:
    out_file = tmp_path / "batch.csv"
    code, _, err = cli(
        "codes", "create", "--cny", "9.9", "--count", "3", "--expires", "2099-12-31",
        "--out", str(out_file),
    )  # fmt: skip
    assert code == 0 and "wrote 3 codes" in err
    rows = list(csv.DictReader(out_file.open(encoding="utf-8")))
    assert [r["credits"] for r in rows] == ["99000"] * 3
    assert all(r["expires"].startswith("2100-01-01") for r in rows)  # valid through 12-31

    async def redeem(wallet, store):
        return await redeem_code(wallet, store, "telegram:7", rows[0]["code"], user_key="t7")

    assert use(sqlite_url, redeem) == 99_000_000
    code, out, _ = cli("codes", "list", "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert sorted(i["status"] for i in listed) == ["active", "active", "used"]
    assert [i["used_by"] for i in listed if i["status"] == "used"] == ["telegram:7"]
    assert all(rows[0]["code"] not in line for line in out.splitlines())

    active_id = next(i["id"] for i in listed if i["status"] == "active")
    assert cli("codes", "revoke", active_id)[0] == 0
    code, _, err = cli("codes", "revoke", rows[0]["code"])  # already redeemed
    assert code == 1 and "already redeemed" in err
    code, out, _ = cli("codes", "list", "--status", "revoked")
    assert out.startswith(active_id)

    async def redeem_revoked(wallet, store):
        revoked = next(r["code"] for r in rows if codes_id(r["code"]) == active_id)
        with pytest.raises(CodeError) as exc:
            await redeem_code(wallet, store, "telegram:8", revoked, user_key="t8")
        return exc.value.kind

    assert use(sqlite_url, redeem_revoked) == "revoked"

    code, _, err = cli(
        "codes", "create", "--credits", "5", "--count", "1", "--expires", "2020-01-01"
    )
    assert code == 1 and "already past" in err

    # No file: the CSV goes to stdout, ready to pipe.
    code, out, _ = cli("codes", "create", "--credits", "500", "--count", "2")
    assert code == 0 and out.splitlines()[0] == "code,credits,expires"
    assert len(out.splitlines()) == 3


def codes_id(code: str) -> str:
    from bot.codes import code_hash, code_id

    return code_id(code_hash(code))


def test_find_grant_refund_and_compensate(cli: Run, sqlite_url: str) -> None:
    async def setup(wallet, store):
        await remember_name(store, "telegram", "42", "Alice Zhang")
        await remember_name(store, "wechat", "o42", "小明")
        await wallet.credit("telegram:42", 100_000, "seed:1", "seed")
        meta = {"model": "gpt-4", "prompt_tokens": 10, "completion_tokens": 2}
        return await charge(wallet, "telegram:42", 31_620, meta, "h1"), await charge(
            wallet, "telegram:42", 1_000, {"model": "gpt-4"}, "h2"
        )

    charge1, charge2 = use(sqlite_url, setup)
    code, out, _ = cli("find", "alice")
    assert code == 0 and out.startswith("telegram:42 (Alice Zhang): available")
    assert cli("find", "小明")[1].startswith("wechat:o42 (小明)")
    assert cli("find", "42")[1].startswith("telegram:42")
    assert cli("find", "nobody")[0] == 1

    code, out, _ = cli("grant", "telegram:42", "12.5", "--reason", "welcome gift")
    assert code == 0 and "granted 12.5 to telegram:42" in out

    code, out, _ = cli("refund", charge1)
    assert code == 0 and "refunded 31.62" in out
    code, _, err = cli("refund", charge1)
    assert code == 1 and "already made good" in err
    code, _, err = cli("compensate", charge1, "5", "--reason", "sorry")
    assert code == 1 and "already made good" in err
    code, out, _ = cli("compensate", charge2, "0.5", "--reason", "slow reply")
    assert code == 0 and "compensated 0.5" in out
    assert cli("refund", "999999")[0] == 1

    async def ledger(wallet, store):
        return await wallet.entries("telegram:42", limit=100), await wallet.balance("telegram:42")

    entries, balance = use(sqlite_url, ledger)
    refs = {e.ref: e.amount for e in entries if e.ref and e.kind == "credit"}
    assert refs == {charge1: 31_620, charge2: 500}
    # seed 100 + grant 12.5 - charges 32.62 + refund 31.62 + compensation 0.5
    assert balance.total == 100_000 + 12_500 - 32_620 + 31_620 + 500


def test_refund_and_compensate_accept_only_charges(cli: Run, sqlite_url: str) -> None:
    async def setup(wallet, store):
        paid = await wallet.credit("telegram:5", 10_000, "tgstars:c5", "Telegram Stars")
        reversal = await wallet.debit(
            "telegram:5", 10_000, "reverse:tgstars:c5", "Stars refunded", ref=paid.id
        )
        return paid.id, reversal.id

    paid, reversal = use(sqlite_url, setup)
    for argv in (("refund", reversal), ("compensate", reversal, "10", "--reason", "x"),
                 ("refund", paid)):  # fmt: skip
        code, _, err = cli(*argv)
        assert code == 1 and "not a charge" in err

    async def total(wallet, store):
        return (await wallet.balance("telegram:5")).total

    assert use(sqlite_url, total) == 0


def test_grant_and_refund_reach_a_user_who_linked_since(any_cli: Run, store_url: str) -> None:
    """`grant --key` rerun after the user's /link credits nothing more; a refund of a charge
    made before the /link reaches the wallet the user pays from now, not the emptied one."""

    async def setup(wallet, store):
        await wallet.credit("wechat:o9", 50_000, "seed:9", "seed")
        return await charge(wallet, "wechat:o9", 2_000, {"model": "gpt-4"}, "h9")

    spent = use(store_url, setup)
    code, out, _ = any_cli("grant", "wechat:o9", "3", "--reason", "gift", "--key", "g9")
    assert code == 0 and "granted 3 to wechat:o9" in out

    async def link(wallet, store):
        accounts = Accounts(store, wallet)
        await accounts.link("wechat", "o9", await accounts.new_link_code("telegram:9"))

    use(store_url, link)
    code, out, _ = any_cli("grant", "wechat:o9", "3", "--reason", "gift", "--key", "g9")
    assert code == 0 and "granted 3 to telegram:9" in out  # the rerun: the same grant
    code, out, _ = any_cli("refund", spent)
    assert code == 0 and "refunded 2" in out

    async def totals(wallet, store):
        return [(await wallet.balance(a)).total for a in ("wechat:o9", "telegram:9")]

    assert use(store_url, totals) == [0, 50_000 - 2_000 + 3_000 + 2_000]


def test_report_totals_match_the_ledger(any_cli: Run, store_url: str) -> None:
    async def setup(wallet, store):
        await wallet.credit("telegram:1", 99_000_000, "code:abc", "redemption code")
        await wallet.credit("wechat:2", 99_000_000, "wxpay:cb1", "WeChat Pay top-up")
        await wallet.credit("wechat:2", 5_000, "admin:grant:x", "grant")
        stars = await wallet.credit("telegram:3", 5_000_000, "tgstars:ch1", "Telegram Stars")
        await wallet.debit(
            "telegram:3", 1_000_000, "reverse:tgstars:ch1", "Stars refunded", ref=stars.id
        )
        ids = []
        for i, (acct, model, p, c) in enumerate(
            [
                ("telegram:1", "gpt-3.5-turbo", 1200, 800),
                ("telegram:1", "gpt-4", 300, 150),
                ("wechat:2", "gpt-3.5-turbo", 50, 10),
                ("wechat:2", "gpt-4o", 1000, 1000),
            ]
        ):
            price = PriceList.load().get(model)
            cost = price.chat_cost(p, c)
            meta = {"model": model, "prompt_tokens": p, "completion_tokens": c}
            ids.append(await charge(wallet, acct, cost, meta, f"r{i}"))
        mj = {"model": "midjourney", "action": "imagine", "task_id": "t1"}
        await charge(wallet, "wechat:2", 2_000_000, mj, "mj1")
        await wallet.credit("telegram:1", 1000, "refund:x", "sorry", ref=ids[0])
        everything = []
        for account in await wallet.accounts():
            everything += await wallet.entries(account, limit=1000)
        return everything

    entries = use(store_url, setup)
    today = datetime.now(UTC).date()
    code, out, _ = any_cli("report", "--from", str(today), "--to", str(today), "--json")
    assert code == 0
    r = json.loads(out)

    captures = [e for e in entries if e.kind == CAPTURE]
    assert r["charged_milli"] == -sum(e.amount for e in captures)
    for model, line in r["models"].items():
        mine = [e for e in captures if e.meta["model"] == model]
        assert line["count"] == len(mine)
        assert line["charged_milli"] == -sum(e.amount for e in mine)
        assert line["prompt_tokens"] == sum(e.meta.get("prompt_tokens", 0) for e in mine)
        assert line["completion_tokens"] == sum(e.meta.get("completion_tokens", 0) for e in mine)
    assert r["topups"] == {
        "code": {"count": 1, "milli": 99_000_000},
        "wxpay": {"count": 1, "milli": 99_000_000},
        "tgstars": {"count": 1, "milli": 5_000_000},
    }
    assert r["reversed_milli"] == 1_000_000
    assert r["other_credits"] == {"grant": {"count": 1, "milli": 5_000}}
    assert r["refunds_milli"] == 1000
    # gpt-3.5-turbo at 0.50/1.50 USD per 1M, gpt-4 at 30/60, gpt-4o at its list price.
    prices = PriceList.load()
    o = prices.get("gpt-4o")
    expected = (
        (Decimal(1250) * Decimal("0.50") + Decimal(810) * Decimal("1.50"))
        + (Decimal(300) * 30 + Decimal(150) * 60)
        + (1000 * o.usd_input + 1000 * o.usd_output)
    ) / 1_000_000
    assert Decimal(r["cost_usd"]) == expected
    assert r["models"]["midjourney"]["cost_usd"] is None
    cost_milli = int((expected * Decimal("7.1") * 10_000 * 1000).to_integral_value())
    assert r["margin_milli"] == r["charged_milli"] - 1000 - cost_milli

    code, out, _ = any_cli("report", "--from", str(today), "--to", str(today))
    assert code == 0 and "WeChat Pay" in out and "Telegram Stars" in out and "margin" in out
    yesterday = str(today - timedelta(days=1))
    code, out, _ = any_cli("report", "--from", yesterday, "--to", yesterday, "--json")
    assert json.loads(out)["charged_milli"] == 0


def tamper(url: str, account: str, delta: int) -> None:
    """Change a stored balance behind the wallet's back, as a bad migration or hand edit would."""
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        client.hincrby(f"{{acct:{account}}}", "total", delta)
        client.close()
        return

    async def sql() -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE wallet_accounts SET total = total + :d WHERE id = :a"),
                {"d": delta, "a": account},
            )
        await engine.dispose()

    asyncio.run(sql())


def test_check_finds_a_corrupted_balance(any_cli: Run, store_url: str) -> None:
    async def setup(wallet, store):
        await wallet.credit("telegram:1", 50_000, "seed:1", "seed")
        await charge(wallet, "telegram:1", 1_234, {"model": "gpt-4"}, "h1")
        await wallet.hold("telegram:1", 2_000, "h-open", ttl=600)
        await wallet.credit("wechat:9", 7_000, "seed:2", "seed")

    use(store_url, setup)
    code, out, _ = any_cli("check")
    assert code == 0 and "checked 2 accounts, 3 ledger entries, 1 open holds" in out
    assert "no problems found" in out

    tamper(store_url, "wechat:9", 5_000)
    code, out, _ = any_cli("check")
    assert code == 1
    assert "PROBLEM: account wechat:9: balance 12 but its ledger sums to 7 (difference 5)" in out
    assert "telegram:1" not in out.split("PROBLEM", 1)[1]


def test_check_finds_a_hold_the_sweeper_missed(cli: Run, sqlite_url: str) -> None:
    async def setup(wallet, store):
        await wallet.credit("telegram:1", 50_000, "seed:1", "seed")
        hold = await wallet.hold("telegram:1", 2_000, "h-late", ttl=0.05)
        await asyncio.sleep(0.1)
        return hold.id

    hold_id = use(sqlite_url, setup)
    code, out, _ = cli("check", "--grace", "0")
    assert code == 1 and f"hold {hold_id} of telegram:1" in out and "still open" in out
    assert cli("check")[0] == 0  # within the default grace the sweeper may still come


def test_admin_credit_compensation_reaches_a_user_who_linked_since(
    any_cli: Run, store_url: str
) -> None:
    """`admin credit --ref` must name the entry's own account; if its identities were linked
    away, the compensation moves on to the wallet the user pays from now."""

    async def setup(wallet, store):
        await wallet.credit("wechat:o5", 50_000, "seed:5", "seed")
        spent = await charge(wallet, "wechat:o5", 2_000, {"model": "gpt-4"}, "h5")
        accounts = Accounts(store, wallet)
        await accounts.link("wechat", "o5", await accounts.new_link_code("telegram:5"))
        return spent

    spent = use(store_url, setup)
    argv = ("credit", "wechat:o5", "2", "--reason", "overcharge", "--ref", spent, "--key", "c5")
    for _ in range(2):  # the same --key again credits nothing more
        code, out, err = any_cli(*argv)
        assert code == 0, err
        assert "credited 2 to wechat:o5" in out and "moved to linked wallet telegram:5" in out

    async def state(wallet, store):
        made = [e for e in await wallet.entries("wechat:o5") if e.key == "c5"]
        totals = [(await wallet.balance(a)).total for a in ("wechat:o5", "telegram:5")]
        return [e.ref for e in made], totals

    refs, totals = use(store_url, state)
    assert refs == [spent]
    assert totals == [0, 50_000 - 2_000 + 2_000]


def test_report_counts_a_payment_moved_to_a_linked_wallet_once(
    any_cli: Run, store_url: str
) -> None:
    """A payment that reached a linked-away account and was moved on (Accounts.settle) is one
    top-up; the move is neither a refund nor another top-up."""

    async def setup(wallet, store):
        accounts = Accounts(store, wallet)
        await accounts.link("wechat", "m1", await accounts.new_link_code("telegram:m1"))
        await store.set("payacct:wxpay:m1", "wechat:m1")  # pinned before the link
        await accounts.credit_payment("wechat", "m1", 99_000, key="wxpay:m1", reason="pay")
        return [e.key for e in await wallet.entries("telegram:m1")]

    assert any(k.startswith("drain:") for k in use(store_url, setup))  # it did move
    today = str(datetime.now(UTC).date())
    code, out, _ = any_cli("report", "--from", today, "--to", today, "--json")
    assert code == 0
    r = json.loads(out)
    assert r["topups"] == {"wxpay": {"count": 1, "milli": 99_000}}
    assert (r["refunds_milli"], r["other_credits"], r["margin_milli"]) == (0, {}, 0)
