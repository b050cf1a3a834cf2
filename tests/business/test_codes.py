"""Redemption codes: typed by people, sold by operators, redeemed exactly once."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import codes
from bot.codes import CodeError, create_codes, list_codes, redeem_code, revoke_code
from tests.business.conftest import Bank

ROOT = Path(__file__).resolve().parents[2]
FIVE_CREDITS = 5_000


async def test_a_code_is_easy_to_type_and_only_its_hash_is_stored(
    sqlite_bank: Bank, sqlite_url: str
) -> None:
    [made] = await create_codes(sqlite_bank.store, 10_000_000, 1)
    assert re.fullmatch(r"([0-9A-HJKMNP-TV-Z]{4}-){5}[0-9A-HJKMNP-TV-Z]{4}", made.code)
    assert len(codes.ALPHABET) ** codes.CODE_CHARS >= 2**120
    path = Path(sqlite_url.split(":///", 1)[1])
    db = b"".join(f.read_bytes() for f in path.parent.glob(path.name + "*"))  # with -wal
    plain = made.code.replace("-", "").encode()
    assert plain not in db and made.code.encode() not in db
    assert codes.code_hash(made.code).encode() in db

    # A person may type it in lower case, without dashes, with O for 0 and I/L for 1.
    typed = made.code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    credited = await redeem_code(
        sqlite_bank.wallet, sqlite_bank.store, "telegram:1", typed, user_key="telegram:1"
    )
    assert credited == 10_000_000
    assert (await sqlite_bank.wallet.balance("telegram:1")).total == 10_000_000


async def test_a_code_redeems_once_and_replays_credit_nothing(bank: Bank) -> None:
    [made] = await create_codes(bank.store, FIVE_CREDITS, 1)
    w, s = bank.wallet, bank.store
    assert await redeem_code(w, s, "alice", made.code, user_key="alice") == FIVE_CREDITS
    for account in ("alice", "bob"):
        with pytest.raises(CodeError) as err:
            await redeem_code(w, s, account, made.code, user_key=account)
        assert err.value.kind == "used"
    assert (await w.balance("alice")).total == FIVE_CREDITS
    assert (await w.balance("bob")).total == 0
    [entry] = await w.entries("alice")
    assert entry.key == f"code:{codes.code_hash(made.code)}"
    [info] = await list_codes(s)
    assert (info.status, info.used_by) == ("used", "alice")


async def test_racing_redeemers_in_one_process_credit_once(bank: Bank) -> None:
    [made] = await create_codes(bank.store, FIVE_CREDITS, 1)
    accounts = [f"user{i}" for i in range(8)]

    async def one(account: str) -> str:
        try:
            await redeem_code(bank.wallet, bank.store, account, made.code, user_key=account)
            return "ok"
        except CodeError as exc:
            return exc.kind

    results = await asyncio.gather(*(one(a) for a in accounts))
    assert sorted(results) == ["ok"] + ["used"] * 7
    totals = [(await bank.wallet.balance(a)).total for a in accounts]
    assert sorted(totals) == [0] * 7 + [FIVE_CREDITS]


@pytest.mark.timeout(60)
@pytest.mark.slow
async def test_racing_redeemers_in_separate_processes_credit_once(
    bank: Bank, tmp_path: Path
) -> None:
    [made] = await create_codes(bank.store, FIVE_CREDITS, 1)
    go = tmp_path / "go"
    accounts = [f"proc{i}" for i in range(3)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "tests.business.redeem_worker", bank.url, made.code, a, str(go)),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        for a in accounts
    ]
    try:
        for p in procs:  # every process has opened its wallet and store
            assert p.stdout is not None
            assert await p.stdout.readline() == b"ready\n"
        go.touch()
        outs = [(await p.communicate())[0].decode().strip() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    assert sorted(outs) == [f"ok {FIVE_CREDITS}"] + ["used"] * 2, outs
    totals = [(await bank.wallet.balance(a)).total for a in accounts]
    assert sorted(totals) == [0, 0, FIVE_CREDITS]


async def test_guessing_is_cut_off_per_user(bank: Bank) -> None:
    [made] = await create_codes(bank.store, FIVE_CREDITS, 1)
    w, s = bank.wallet, bank.store
    kinds = []
    for _ in range(codes.MAX_WRONG + 3):
        try:
            await redeem_code(w, s, "mallory", codes.generate_code(), user_key="mallory")
        except CodeError as exc:
            kinds.append(exc.kind)
    assert kinds == ["invalid"] * codes.MAX_WRONG + ["rate_limited"] * 3
    # Past the limit even the right code is refused, so guessing cannot be confirmed...
    with pytest.raises(CodeError) as err:
        await redeem_code(w, s, "mallory", made.code, user_key="mallory")
    assert err.value.kind == "rate_limited"
    # ...while another user is not held back, and the code is still good.
    assert await redeem_code(w, s, "carol", made.code, user_key="carol") == FIVE_CREDITS
    # The window passes: mallory may try again.
    later = datetime.now(UTC) + timedelta(seconds=codes.WINDOW_SECONDS + 1)
    with pytest.raises(CodeError) as err:
        await redeem_code(w, s, "mallory", codes.generate_code(), user_key="mallory", now=later)
    assert err.value.kind == "invalid"


async def test_typos_that_cannot_be_codes_cost_no_attempt(sqlite_bank: Bank) -> None:
    w, s = sqlite_bank.wallet, sqlite_bank.store
    for _ in range(codes.MAX_WRONG * 2):
        with pytest.raises(CodeError) as err:
            await redeem_code(w, s, "dave", "100", user_key="dave")
        assert err.value.kind == "invalid"
    [made] = await create_codes(s, FIVE_CREDITS, 1)
    assert await redeem_code(w, s, "dave", made.code, user_key="dave") == FIVE_CREDITS


async def test_revoked_and_expired_codes_are_refused(bank: Bank) -> None:
    w, s = bank.wallet, bank.store
    soon = datetime.now(UTC) + timedelta(hours=1)
    revoked, expiring, used = await create_codes(s, FIVE_CREDITS, 3, expires_at=soon)
    info = await revoke_code(s, revoked.id)
    assert info.status == "revoked"
    with pytest.raises(CodeError) as err:
        await redeem_code(w, s, "erin", revoked.code, user_key="erin")
    assert err.value.kind == "revoked"

    later = soon + timedelta(seconds=1)
    with pytest.raises(CodeError) as err:
        await redeem_code(w, s, "erin", expiring.code, user_key="erin", now=later)
    assert err.value.kind == "expired"

    await redeem_code(w, s, "erin", used.code, user_key="erin")
    with pytest.raises(CodeError) as err:
        await revoke_code(s, used.code)
    assert err.value.kind == "used"
    assert (await w.balance("erin")).total == FIVE_CREDITS
    statuses = {i.id: i.status for i in await list_codes(s, now=later)}
    assert statuses == {revoked.id: "revoked", expiring.id: "expired", used.id: "used"}


async def test_a_crash_between_claim_and_credit_loses_nothing(bank: Bank) -> None:
    w, s = bank.wallet, bank.store
    [made] = await create_codes(s, FIVE_CREDITS, 1)
    h = codes.code_hash(made.code)
    # The process died right after claiming the code for frank, before the credit.
    claim = json.dumps({"account": "frank", "at": datetime.now(UTC).isoformat()})
    assert await s.add(f"code:used:{h}", claim)
    with pytest.raises(CodeError) as err:
        await redeem_code(w, s, "grace", made.code, user_key="grace")
    assert err.value.kind == "used"
    assert await redeem_code(w, s, "frank", made.code, user_key="frank") == FIVE_CREDITS
    with pytest.raises(CodeError):
        await redeem_code(w, s, "frank", made.code, user_key="frank")
    assert (await w.balance("frank")).total == FIVE_CREDITS


async def test_codes_go_to_a_csv_an_operator_can_sell(sqlite_bank: Bank, tmp_path: Path) -> None:
    expires = datetime(2027, 1, 31, tzinfo=UTC)
    made = await create_codes(sqlite_bank.store, 10_000_000, 3, expires_at=expires)
    out = tmp_path / "codes.csv"
    codes.write_csv(out, made)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["code"] for r in rows] == [m.code for m in made]
    assert {r["credits"] for r in rows} == {"10000"}
    assert {r["expires"][:10] for r in rows} == {"2027-01-31"}


def test_cny_amounts_are_exact() -> None:
    assert codes.parse_cny("1") == 10_000_000
    assert codes.parse_cny("0.01") == 100_000
    assert codes.parse_cny("12.5") == 125_000_000
    for bad in ("0", "-1", "1.234", "abc", "1e3"):
        with pytest.raises(ValueError):
            codes.parse_cny(bad)
