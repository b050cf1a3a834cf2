"""Who pays: a platform identity ("telegram:42") resolves to one wallet account.

An identity's account is its own id until `/link` joins it to another one, so the common
case costs one store read and no write. `/link` on the first account gives a one-time code;
`/link CODE` from the second identity points it at the first account's wallet, moving any
credits the second identity had, so one person has one wallet across Telegram and WeChat.
"""

from __future__ import annotations

import logging
import secrets

from billing.wallet.base import Wallet
from bot.store.base import Store

log = logging.getLogger(__name__)

LINK_TTL_SECONDS = 600
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # no 0/O, 1/I/L, U: easy to type
_CODE_LEN = 8


def identity(platform: str, user_id: str) -> str:
    """The platform identity, also the default account id: "telegram:42"."""
    return f"{platform}:{user_id}"


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
        return await self.store.get(f"ident:{ident}") or ident

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

        The code is consumed by the delete that succeeds first, so two identities racing for
        one code cannot both link. Credits the identity had on its old account move with
        idempotency keys derived from the code, so a retry never moves them twice.
        """
        key = f"link:{code.strip().upper()}"
        target = await self.store.get(key)
        if target is None:
            raise LinkError("invalid")
        current = await self.resolve(platform, user_id)
        if current == target:
            raise LinkError("same")
        old = await self.wallet.balance(current)
        if old.held:
            raise LinkError("busy")
        if not await self.store.delete(key):
            raise LinkError("invalid")
        moved = 0
        if old.available > 0:
            tag = code.strip().upper()
            out = await self.wallet.debit(
                current,
                old.available,
                f"link:{tag}:out",
                "moved to linked wallet",
                meta={"to": target},
            )
            await self.wallet.credit(
                target,
                -out.amount,
                f"link:{tag}:in",
                "moved from linked account",
                ref=out.id,
                meta={"from": current},
            )
            moved = -out.amount
        await self.store.set(f"ident:{identity(platform, user_id)}", target)
        log.info(
            "linked identity on %s to another account (moved %d millicredits)", platform, moved
        )
        return target, moved
