"""Who pays: a platform identity ("telegram:42") resolves to one wallet account.

An identity's account is its own id until `/link` joins it to another one, so the common
case costs one store read and no write. `/link` on the first account gives a one-time code;
`/link CODE` from the second identity points it at the first account's wallet, moving any
credits the second identity had, so one person has one wallet across Telegram and WeChat.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from billing.wallet.base import Entry, Wallet
from bot.store.base import Store

log = logging.getLogger(__name__)

LINK_TTL_SECONDS = 600
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # no 0/O, 1/I/L, U: easy to type
_CODE_LEN = 8
CLAIM_TTL_SECONDS = 7 * 24 * 3600  # a half-done link can be finished for a week


NAMES = "names"  # set of identities with a recorded display name (for `admin find`)


def name_key(ident: str) -> str:
    return f"name:{ident}"


async def remember_name(store: Store, platform: str, user_id: str, name: str) -> None:
    """Record a user's display name for `admin find` (one read when nothing changed)."""
    name = name.strip()
    if not name:
        return
    ident = identity(platform, user_id)
    if await store.get(name_key(ident)) != name:
        await store.set(name_key(ident), name)
        await store.sadd(NAMES, ident)


def identity(platform: str, user_id: str) -> str:
    """The platform identity, also the default account id: "telegram:42"."""
    return f"{platform}:{user_id}"


def ident_key(ident: str) -> str:
    """The store key of an identity's link: absent until /link points it at another account."""
    return f"ident:{ident}"


def account_for(ident: str, linked: str | None) -> str:
    """The account an identity pays from, given the value of its `ident_key` (read in a batch)."""
    return linked or ident


class LinkError(Exception):
    """`/link CODE` refused; `kind` is "invalid", "same" or "busy"."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Accounts:
    """Identity -> account, kept in the Store under `ident:<platform>:<user>`."""

    def __init__(self, store: Store, wallet: Wallet) -> None:
        self.store = store
        self.wallet = wallet

    async def resolve(self, platform: str, user_id: str) -> str:
        """The wallet account that pays for this platform user."""
        ident = identity(platform, user_id)
        return account_for(ident, await self.store.get(ident_key(ident)))

    async def credit_payment(
        self,
        platform: str,
        user_id: str,
        amount_milli: int,
        *,
        key: str,
        reason: str,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        """Credit a confirmed payment to the payer's account; the same `key` again credits
        nothing more, even after a /link (the first payer's account is kept under `payacct:`).

        The paying account is written down before the credit, so a reversal finds the payment
        even if the process died between the credit and its `pay:` record. The core's
        `credit_payment` and the operator's `admin order` both credit through here.
        """
        account = await self.resolve(platform, user_id)
        await self.store.add(f"payacct:{key}", account)
        account = await self.store.get(f"payacct:{key}") or account  # a replay: the first payer
        entry = await self.wallet.credit(account, amount_milli, key, reason, meta=meta)
        await self.store.set(f"pay:{key}", entry.id)
        return entry

    async def resolve_name(self, name: str) -> str:
        """An admin's USER argument: "platform:user_id" (following links) or an account id."""
        return await self.store.get(f"ident:{name}") or name

    async def new_link_code(self, account: str) -> str:
        """A one-time code that joins another identity to `account` within LINK_TTL_SECONDS."""
        while True:
            code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LEN))
            if await self.store.add(f"link:{code}", account, ttl=LINK_TTL_SECONDS):
                return code

    async def link(self, platform: str, user_id: str, code: str) -> tuple[str, int]:
        """Point this identity at the code's account; returns (account, millicredits moved).

        Retry-safe: the first identity to use a code claims it with a durable plan (source,
        target, amount); the credits then move with wallet keys unique to that plan, and the
        code is consumed only after both moves succeeded. A retry after any failure (same
        identity, same code, even after the code expired) finishes the same move and never
        moves twice; another identity is refused. Every identity that paid from the old
        account is re-pointed too, so no one is left behind on an emptied wallet.
        """
        tag = code.strip().upper()
        me = identity(platform, user_id)
        claim_key = f"linkclaim:{tag}"
        raw = await self.store.get(claim_key)
        if raw is None:
            target = await self.store.get(f"link:{tag}")
            if target is None:
                raise LinkError("invalid")
            current = await self.resolve(platform, user_id)
            if current == target:
                raise LinkError("same")
            old = await self.wallet.balance(current)
            if old.held:
                raise LinkError("busy")
            plan = {"ident": me, "src": current, "dst": target, "amount": max(old.available, 0)}
            if not await self.store.add(claim_key, json.dumps(plan), ttl=CLAIM_TTL_SECONDS):
                raw = await self.store.get(claim_key)  # someone claimed it just now
                if raw is None:
                    raise LinkError("invalid")
        if raw is not None:
            plan = json.loads(raw)
            if plan["ident"] != me:
                raise LinkError("invalid")
        src, dst, amount = str(plan["src"]), str(plan["dst"]), int(plan["amount"])
        if amount > 0:
            move = f"link:{tag}:{src}->{dst}"
            out = await self.wallet.debit(
                src, amount, f"{move}:out", "moved to linked wallet", meta={"to": dst}
            )
            await self.wallet.credit(
                dst,
                -out.amount,
                f"{move}:in",
                "moved from linked account",
                ref=out.id,
                meta={"from": src},
            )
        await self._repoint(src, dst, me)
        await self.store.delete(f"link:{tag}")  # consumed only now that the move is complete
        log.info(
            "linked identity on %s to another account (moved %d millicredits)", platform, amount
        )
        return dst, amount

    async def _repoint(self, src: str, dst: str, me: str) -> None:
        """Every identity paying from `src` (and `me`) pays from `dst` from now on."""
        members = await self.store.smembers(_members(src))
        members.add(me)
        if ":" in src and await self.store.get(f"ident:{src}") in (None, src):
            members.add(src)  # the identity whose own default account this was
        for ident in sorted(members):
            await self.store.sadd(_members(dst), ident)
            await self.store.set(f"ident:{ident}", dst)


def _members(account: str) -> str:
    """The set of identities linked to `account` (kept so a later /link moves them all)."""
    return f"linked:{account}"
