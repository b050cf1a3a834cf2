"""Redemption codes: credits sold as typed codes, redeemed exactly once.

A code is 120 random bits written as 24 Crockford base32 characters in groups of four
(`7KQ2-M9XD-...`): no I, L, O or U to misread, and input ignores case, dashes and spaces
(and reads I/L as 1, O as 0). Only the SHA-256 of the normalized code is stored, so a copy of
the store does not give the codes away.

Exactly once, across processes: redeeming first *claims* the code with an atomic add-if-absent
(`code:used:<hash>` = the account), then credits the wallet with the idempotency key
`code:<hash>`. A crash between the two leaves a claim naming the account; the same user
retrying the code finishes the credit (the key makes it count once, on the claim's account,
even if /link moved the user since), anyone else is told the code is used. Revoking claims
the code the same way, so a revoke and a redeem cannot both win.

Wrong guesses are counted per user in a time window; past the limit every attempt is refused,
valid or not, so guessing stays hopeless even before the 120 bits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billing.money import fen_to_milli, parse_fen
from billing.wallet.base import MAX_TOTAL, Wallet
from bot.accounts import Accounts
from bot.store.base import Store
from bot.store.keys import (
    CODES,
    code_done_key,
    code_good_key,
    code_key,
    code_tries_key,
    code_used_key,
)

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
CODE_CHARS = 24  # 24 x 5 = 120 bits of randomness
GROUP = 4
MAX_WRONG = 5  # wrong guesses allowed per user per window
WINDOW_SECONDS = 3600

_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})
_REVOKED = "!revoked"  # claim value of a revoked code

KINDS = ("invalid", "used", "expired", "revoked", "rate_limited")

MESSAGES: dict[str, tuple[str, str]] = {
    "invalid": ("That code is not valid.", "兑换码无效。"),
    "used": ("That code has already been used.", "该兑换码已被使用。"),
    "expired": ("That code has expired.", "该兑换码已过期。"),
    "revoked": ("That code has been revoked.", "该兑换码已作废。"),
    "rate_limited": (
        "Too many wrong codes. Please try again later.",
        "错误次数过多，请稍后再试。",
    ),
}


class CodeError(Exception):
    """A code was refused; `kind` is one of KINDS, `message(lang)` says it to the user."""

    def __init__(self, kind: str, detail: str = "") -> None:
        assert kind in KINDS, kind
        super().__init__(detail or kind)
        self.kind = kind

    def message(self, language: str | None = "en") -> str:
        en, zh = MESSAGES[self.kind]
        return zh if (language or "").lower().startswith("zh") else en


@dataclass(frozen=True, slots=True)
class NewCode:
    """A freshly made code: the only moment the plain code exists outside a buyer's hands."""

    code: str
    id: str
    amount: int  # millicredits
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """What the operator sees of a stored code (never the code itself)."""

    id: str
    hash: str
    amount: int
    created_at: datetime
    expires_at: datetime | None
    batch: str
    status: str  # "active", "used", "revoked", "expired"
    used_by: str | None = None
    used_at: datetime | None = None


# --- the code's text ---------------------------------------------------------------------


def generate_code() -> str:
    """A new random code, grouped for typing."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
    return "-".join(raw[i : i + GROUP] for i in range(0, CODE_CHARS, GROUP))


def normalize(text: str) -> str | None:
    """The code's canonical characters, or None if it cannot be a code at all."""
    chars = "".join(ch for ch in text.upper() if ch not in "- \t\r\n_").translate(_READ_AS)
    if len(chars) != CODE_CHARS or any(ch not in ALPHABET for ch in chars):
        return None
    return chars


def code_hash(text: str) -> str:
    """SHA-256 (hex) of the normalized code; ValueError if it is not a code."""
    norm = normalize(text)
    if norm is None:
        raise ValueError("not a redemption code")
    return hashlib.sha256(norm.encode("ascii")).hexdigest()


def code_id(hash_hex: str) -> str:
    """A short handle for operators (list, revoke), safe to show: it reveals nothing."""
    return hash_hex[:12]


def parse_cny(text: str) -> int:
    """A code's value typed in CNY (up to two decimals, no upper limit) to millicredits."""
    return fen_to_milli(parse_fen(text, most=None))


# --- storage ---------------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def _record(store: Store, hash_hex: str) -> dict[str, Any] | None:
    raw = await store.get(code_key(hash_hex))
    return json.loads(raw) if raw else None


async def create_codes(
    store: Store,
    amount: int,
    count: int,
    *,
    expires_at: datetime | None = None,
    batch: str = "",
    now: datetime | None = None,
) -> list[NewCode]:
    """Make `count` codes worth `amount` millicredits each and store their hashes."""
    if amount <= 0 or count <= 0:
        raise ValueError("amount and count must be positive")
    if amount > MAX_TOTAL:  # no account could ever take it: it would only fail at redemption
        from billing.money import format_credits

        raise ValueError(f"a code is worth at most {format_credits(MAX_TOTAL)} credits")
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    created = _now(now)
    batch = batch or created.strftime("%Y%m%d%H%M%S")
    made: list[NewCode] = []
    while len(made) < count:
        code = generate_code()
        h = code_hash(code)
        record = {
            "amount": amount,
            "created_at": created.isoformat(),
            "expires_at": expires_at.isoformat() if expires_at else None,
            "batch": batch,
        }
        if not await store.add(code_key(h), json.dumps(record)):
            continue  # a 2^-120 collision: draw again
        await store.sadd(CODES, h)
        made.append(NewCode(code, code_id(h), amount, expires_at))
    return made


def write_csv(path: Path | str, codes: Iterable[NewCode]) -> None:
    """The sellable list: code, credits, expires (ISO date-time or empty)."""
    from billing.money import format_credits

    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["code", "credits", "expires"])
        for c in codes:
            expires = c.expires_at.isoformat() if c.expires_at else ""
            out.writerow([c.code, format_credits(c.amount), expires])


async def _info(store: Store, hash_hex: str, now: datetime) -> CodeInfo | None:
    record = await _record(store, hash_hex)
    if record is None:
        return None
    expires = _dt(record.get("expires_at"))
    claim_raw = await store.get(code_used_key(hash_hex))
    used_by = used_at = None
    if claim_raw is not None:
        claim = json.loads(claim_raw)
        if claim.get("account") == _REVOKED:
            status = "revoked"
        else:
            status, used_by, used_at = "used", claim.get("account"), _dt(claim.get("at"))
    elif expires is not None and expires <= now:
        status = "expired"
    else:
        status = "active"
    return CodeInfo(
        id=code_id(hash_hex),
        hash=hash_hex,
        amount=int(record["amount"]),
        created_at=datetime.fromisoformat(record["created_at"]),
        expires_at=expires,
        batch=record.get("batch", ""),
        status=status,
        used_by=used_by,
        used_at=used_at,
    )


async def list_codes(store: Store, *, now: datetime | None = None) -> list[CodeInfo]:
    """Every code, oldest first, with its status."""
    now = _now(now)
    infos = [await _info(store, h, now) for h in await store.smembers(CODES)]
    found = [i for i in infos if i is not None]
    return sorted(found, key=lambda i: (i.created_at, i.id))


async def find_code(store: Store, code_or_id: str) -> str | None:
    """The hash of a code given as the code itself or as its id (or a longer hash prefix)."""
    if normalize(code_or_id) is not None:
        h = code_hash(code_or_id)
        return h if await _record(store, h) is not None else None
    prefix = code_or_id.strip().lower()
    if len(prefix) < 6:
        return None
    matches = [h for h in await store.smembers(CODES) if h.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


async def revoke_code(store: Store, code_or_id: str, *, now: datetime | None = None) -> CodeInfo:
    """Make a code unredeemable. CodeError("invalid") if unknown, ("used") if already used."""
    now = _now(now)
    h = await find_code(store, code_or_id)
    if h is None:
        raise CodeError("invalid", f"no code {code_or_id!r}")
    claim = json.dumps({"account": _REVOKED, "at": now.isoformat()})
    if not await store.add(code_used_key(h), claim):
        current = await _info(store, h, now)
        if current is not None and current.status == "used":
            raise CodeError("used", f"code {code_id(h)} was already redeemed")
    info = await _info(store, h, now)
    assert info is not None
    return info


# --- redeeming --------------------------------------------------------------------------------


async def redeem_code(
    wallet: Wallet,
    store: Store,
    account: str,
    code: str,
    *,
    user_key: str,
    now: datetime | None = None,
    max_wrong: int = MAX_WRONG,
    window: int = WINDOW_SECONDS,
) -> int:
    """Credit the code's value to `account` once; returns the millicredits credited.

    `user_key` names the person for the guess limit (e.g. "telegram:42"). Raises CodeError.
    """
    now = _now(now)
    norm = normalize(code)
    if norm is None:
        # Not code-shaped: it reveals nothing about real codes, so it costs no attempt.
        raise CodeError("invalid", "malformed code")
    bucket = f"{user_key}:{int(now.timestamp()) // window}"
    tries = await store.incr(code_tries_key(bucket), ttl=window * 2)
    good = int(await store.get(code_good_key(bucket)) or 0)
    if tries - good > max_wrong:
        raise CodeError("rate_limited", f"{user_key} made too many wrong guesses")

    accounts = Accounts(store, wallet)
    h = hashlib.sha256(norm.encode("ascii")).hexdigest()
    record = await _record(store, h)
    if record is None:
        raise CodeError("invalid", "unknown code")
    # A real code, whatever happens next: it was not a wrong guess.
    await store.incr(code_good_key(bucket), ttl=window * 2)

    amount = int(record["amount"])
    expires = _dt(record.get("expires_at"))
    claimed = False
    if expires is None or expires > now:
        claim = json.dumps({"account": account, "at": now.isoformat()})
        claimed = await store.add(code_used_key(h), claim)
    if not claimed:
        raw = await store.get(code_used_key(h))
        if raw is None:
            raise CodeError("expired")
        holder = json.loads(raw).get("account")
        if holder == _REVOKED:
            raise CodeError("revoked")
        if await store.get(code_done_key(h)):
            raise CodeError("used")
        if holder != account and await accounts.moved_to(holder) != account:
            raise CodeError("used")
        # Our own claim without a finished credit: a crash came between; finish it now, on
        # the claim's account (where the credit's key is), even if /link moved us since.
        account = holder
    # Through Accounts: if the account was linked away meanwhile, the credits follow.
    await accounts.credit(
        account,
        amount,
        f"code:{h}",
        "redemption code",
        meta={"code_id": code_id(h), "batch": record.get("batch", "")},
    )
    await store.set(code_done_key(h), "1")
    return amount
