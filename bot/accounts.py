"""Who pays: a platform identity ("telegram:42") resolves to one wallet account.

An identity's account is its own id until `/link` joins it to another one, so the common
case costs one store read and no write. `/link` on the first account gives a one-time code;
`/link CODE` from the second identity points it at the first account's wallet, moving any
credits the second identity had, so one person has one wallet across Telegram and WeChat.

An account whose identities were linked away is left empty, and must stay so: a credit can
still land on it (a payment pinned to it before the link, a retry, a refund of an old charge,
a credit racing the link). Every credit therefore goes through `Accounts.credit` (or
`credit_payment`), which afterwards asks whether the account was linked away (one store read)
and, if so, moves what it holds to the account its identities pay from now (`settle`). `/link`
writes the new links before it settles the old account, and a credit is written before its
check reads the links, so of a credit racing a link at least one side sees the other: the
credit is moved by one of them (or both, harmlessly: a move takes only what is there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from typing import Any

from billing.wallet.base import DEBIT, Entry, IdempotencyConflict, InsufficientCredits, Wallet
from bot.store.base import Store
from bot.store.keys import (
    NAMES,
    UNSETTLED,
    ident_key,
    link_claim_key,
    link_code_key,
    linked_set,
    name_key,
    payment_account_key,
    payment_entry_key,
)

log = logging.getLogger(__name__)

LINK_TTL_SECONDS = 600
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # no 0/O, 1/I/L, U: easy to type
_CODE_LEN = 8
CLAIM_TTL_SECONDS = 7 * 24 * 3600  # a half-done link can be finished for a week
MAX_HOPS = 8  # links followed from an account (A was linked to B, then B to C, ...)
SETTLE_ROUNDS = 8  # moves tried while concurrent settles keep changing the account
SCAN_ENTRIES = 50  # newest entries of a linked-away account searched for unfinished moves
DRAIN = "drain:"  # wallet keys of settle's moves: drain:<newest entry id>:out / :in
MOVE_OUT = "moved to linked wallet"
MOVE_IN = "moved from linked account"


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
        even if the process died between the credit and its `pay:` record. If that account
        has been linked away by now (a /link between the pin and the credit, or before a
        retry), the credits follow to the linked wallet (`settle`); a retry finishes that
        move and never moves twice. Returns the payment's own ledger entry. The core's
        `credit_payment` and the operator's `admin order` both credit through here.
        """
        account = await self.pinned(payment_account_key(key), await self.resolve(platform, user_id))
        entry = await self.wallet.credit(account, amount_milli, key, reason, meta=meta)
        await self.store.set(payment_entry_key(key), entry.id)
        await self._settle_after_credit(account)
        return entry

    async def credit(
        self,
        account: str,
        amount_milli: int,
        key: str,
        reason: str,
        *,
        ref: str | None = None,
        meta: dict[str, Any] | None = None,
        pin: str | None = None,
    ) -> Entry:
        """`wallet.credit`, then the credits follow `account`'s identities if they were linked
        away meanwhile (grants, refunds, codes: anything that chose the account before).

        `pin`: a store key that keeps the first call's account, for a caller that resolved an
        identity and may retry after a /link (the key is unique per account: crediting the new
        account under it would credit twice). Returns the credit's own ledger entry.
        """
        if pin is not None:
            account = await self.pinned(pin, account)
        entry = await self.wallet.credit(account, amount_milli, key, reason, ref=ref, meta=meta)
        await self._settle_after_credit(account)
        return entry

    async def _settle_after_credit(self, account: str) -> None:
        """`settle` after a credit that is done: its failure must not make the credit look
        failed (a retry without a key would credit twice), so the account stays listed for
        the sweeper (`settle_listed` finishes the move) and the caller gets its entry."""
        try:
            await self.settle(account)
        except Exception as exc:
            with contextlib.suppress(Exception):  # settle lists it too; this covers its reads
                await self.store.sadd(UNSETTLED, account)
            log.warning(
                "moving a credit to a linked wallet failed (%s); the sweeper will finish it",
                type(exc).__name__,
            )

    async def pinned(self, pin: str, account: str) -> str:
        """The account first written under the store key `pin` (this one, unless a first try
        wrote it): what a retried money operation keyed per account must use again."""
        await self.store.add(pin, account)
        return await self.store.get(pin) or account

    async def moved_to(self, account: str) -> str | None:
        """Where the identities of a linked-away `account` pay from now (following a chain of
        links), or None if it was not linked away. One store read when it was not."""
        seen = {account}
        current = account
        for _ in range(MAX_HOPS):
            nxt = await self.store.get(ident_key(current))
            if nxt is None or nxt in seen:  # not linked away (or a loop: stop where it closes)
                break
            seen.add(nxt)
            current = nxt
        return None if current == account else current

    async def settle(self, account: str) -> None:
        """If `account` was linked away, move what it holds to where it resolves now.

        Each move is a debit on the old account keyed by its newest ledger entry (so settles
        racing on the same state make the same move once) that names its destination, and a
        credit keyed by that debit; a settle first finishes every move whose credit is missing
        (a crash in between). The account is listed under UNSETTLED before each move's debit
        (a cancelled task or a killed process may stop between debit and credit) and when
        held credits cannot move yet; the sweeper settles it again (`settle_listed`) and
        unlists it once it is empty.
        """
        todo, done = [account], set()
        while todo and len(done) < MAX_HOPS:
            src = todo.pop(0)
            if src in done:
                continue
            done.add(src)
            dst = await self.moved_to(src)
            if dst is None:
                continue
            try:
                todo.extend(await self._drain(src, dst))
            except Exception:
                with contextlib.suppress(Exception):  # listed, the sweeper finishes it
                    await self.store.sadd(UNSETTLED, src)
                raise

    async def _drain(self, src: str, dst: str) -> set[str]:
        """Move `src`'s available credits to `dst`; returns the accounts credited."""
        credited: set[str] = set()
        look_back = True  # finish the moves a crash or a concurrent settle left half-done
        for _ in range(SETTLE_ROUNDS):
            recent: list[Entry] = []
            if look_back:
                recent = await self.wallet.entries(src, limit=SCAN_ENTRIES)
                for entry in recent:
                    if entry.kind == DEBIT and entry.key.startswith(DRAIN) and entry.meta:
                        credited.add(await self._finish_move(entry))
                look_back = False
            balance = await self.wallet.balance(src)
            if balance.available <= 0:
                if balance.held > 0:  # a reply or image began here before the link
                    await self.store.sadd(UNSETTLED, src)
                return credited
            recent = recent or await self.wallet.entries(src, limit=1)
            mark = recent[0].id if recent else "0"
            # Listed before the debit: if this task is cancelled or the process dies between
            # the debit and its credit, the sweeper's `settle_listed` finishes the move.
            await self.store.sadd(UNSETTLED, src)
            try:
                out = await self.wallet.debit(
                    src, balance.available, f"{DRAIN}{mark}:out", MOVE_OUT, meta={"to": dst}
                )
            except (InsufficientCredits, IdempotencyConflict):
                look_back = True  # a concurrent settle moved it first: finish its move
                continue
            credited.add(await self._finish_move(out))
        log.warning("an account linked away is still changing; the sweeper will settle it")
        await self.store.sadd(UNSETTLED, src)
        return credited

    async def _finish_move(self, out: Entry) -> str:
        """The credit of a settle's debit, to the account the debit names (once: its key)."""
        dst = str(out.meta["to"])
        await self.wallet.credit(
            dst,
            -out.amount,
            out.key.removesuffix(":out") + ":in",
            MOVE_IN,
            ref=out.id,
            meta={"from": out.account},
        )
        return dst

    async def settle_listed(self) -> int:
        """The sweeper's job: settle every account listed as still holding credits after it
        was linked away; an account leaves the list once it holds nothing. Returns how many
        are still listed."""
        left = 0
        for account in sorted(await self.store.smembers(UNSETTLED)):
            try:
                await self.settle(account)
                balance = await self.wallet.balance(account)
                empty = balance.total == 0 and balance.held == 0
                if empty or await self.moved_to(account) is None:
                    await self.store.srem(UNSETTLED, account)
                    continue
            except Exception as exc:  # one account's failure must not stop the pass
                log.warning(
                    "settling a linked-away account failed (%s); retried next pass",
                    type(exc).__name__,
                )
            left += 1
        return left

    async def resolve_name(self, name: str) -> str:
        """An admin's USER argument: "platform:user_id" (following links) or an account id."""
        return await self.store.get(ident_key(name)) or name

    async def new_link_code(self, account: str) -> str:
        """A one-time code that joins another identity to `account` within LINK_TTL_SECONDS."""
        while True:
            code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LEN))
            if await self.store.add(link_code_key(code), account, ttl=LINK_TTL_SECONDS):
                return code

    async def link(self, platform: str, user_id: str, code: str) -> tuple[str, int]:
        """Point this identity at the code's account; returns (account, millicredits moved).

        Retry-safe: the first identity to use a code claims it with a durable plan (source,
        target, amount); the credits then move with wallet keys unique to that plan, and the
        code is consumed only after both moves succeeded. A retry after any failure (same
        identity, same code, even after the code expired) finishes the same move and never
        moves twice; another identity is refused. Every identity that paid from the old
        account is re-pointed too, so no one is left behind on an emptied wallet.

        Credits that land on the old account after the plan read its balance (a payment
        racing the link) are moved after the re-pointing (`settle`). A reply or image that
        started on the old account after the plan holds part of it: the plan's move is then
        refused by the wallet, nothing moves, the claim is given back and the user is told
        "busy", so the next try plans again.
        """
        tag = code.strip().upper()
        me = identity(platform, user_id)
        claim_key = link_claim_key(tag)
        raw = await self.store.get(claim_key)
        if raw is None:
            target = await self.store.get(link_code_key(tag))
            if target is None:
                raise LinkError("invalid")
            # A code made before its account was itself linked away joins where it went.
            target = await self.moved_to(target) or target
            current = await self.resolve(platform, user_id)
            if current == target:
                raise LinkError("same")
            old = await self.wallet.balance(current)
            if old.held:
                raise LinkError("busy")
            plan = {"ident": me, "src": current, "dst": target, "amount": max(old.available, 0)}
            raw = json.dumps(plan)
            if not await self.store.add(claim_key, raw, ttl=CLAIM_TTL_SECONDS):
                raw = await self.store.get(claim_key)  # someone claimed it just now
                if raw is None:
                    raise LinkError("invalid")
        plan = json.loads(raw)
        if plan["ident"] != me:
            raise LinkError("invalid")
        src, dst, amount = str(plan["src"]), str(plan["dst"]), int(plan["amount"])
        if amount > 0:
            move = f"link:{tag}:{src}->{dst}"
            try:
                out = await self.wallet.debit(
                    src, amount, f"{move}:out", MOVE_OUT, meta={"to": dst}
                )
            except InsufficientCredits:
                # Spent or held since the plan (a replay of a debit that happened is never
                # refused): nothing moved, so the next try may plan again.
                await self.store.delete_if(claim_key, raw)
                raise LinkError("busy") from None
            await self.wallet.credit(
                dst, -out.amount, f"{move}:in", MOVE_IN, ref=out.id, meta={"from": src}
            )
        await self._repoint(src, dst, me)
        final = await self.moved_to(dst)
        if final is not None:  # the target was linked away at the same moment: follow it
            await self._repoint(dst, final, me)
        await self.settle(src)  # credits that landed after the plan read the balance
        await self.settle(dst)  # and ours, if the target was linked away meanwhile
        await self.store.delete(link_code_key(tag))  # consumed only now that the move is complete
        log.info(
            "linked identity on %s to another account (moved %d millicredits)", platform, amount
        )
        return final or dst, amount

    async def _repoint(self, src: str, dst: str, me: str) -> None:
        """Every identity paying from `src` (and `me`) pays from `dst` from now on.

        The members are read again after the links are written, so an identity that joined
        `src` at the same moment (a /link into `src` racing this one) is not left behind.
        """
        done: set[str] = set()
        while True:
            members = await self.store.smembers(linked_set(src))
            members.add(me)
            if ":" in src and await self.store.get(ident_key(src)) in (None, src):
                members.add(src)  # the identity whose own default account this was
            if members <= done:
                return
            for ident in sorted(members - done):
                await self.store.sadd(linked_set(dst), ident)
                await self.store.set(ident_key(ident), dst)
            done |= members
