"""The wallet contract: a ledger of two-phase transfers, the same for every backend.

Amounts are integers in millicredits (1 credit = 1,000). Every call that moves money takes an
idempotency key. Keys are unique per account: the same key on two accounts names two independent
operations. On one account, the same key again for the same operation (same kind, same amount)
changes nothing and returns the first result; the same key for a different operation (another
kind among credit, debit and hold, or another amount) raises IdempotencyConflict and changes
nothing. A capture's ledger entry uses the key `capture:` + the hold's key, which then counts
as used on that account like any other entry key.

Invariants (every backend, any concurrency, any number of processes):
- available = total - held never drops below zero;
- total always equals the sum of the account's ledger entries;
- a ledger entry and its balance change commit together;
- a hold past its expiry is never captured: capture refuses it and the sweeper voids it;
- no total, held sum or amount ever exceeds MAX_TOTAL: a credit that would take the total past
  it is refused inside the same statement or script that would have added it
  (BalanceLimitExceeded), so it changes nothing, whatever runs concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from billing.money import format_credits

# Ledger entry kinds. Credits are positive, captures and debits negative.
CREDIT = "credit"  # top-up, grant, refund, compensation
CAPTURE = "capture"  # the spent part of a hold
DEBIT = "debit"  # an operator's reversal (e.g. a refunded payment)

# The most millicredits an account may hold in total (about 9 * 10**12 credits), and so the
# largest amount of any call: 2**53 - 1, the largest integer a double holds exactly. Redis's Lua
# numbers are doubles; SQLite would turn a larger sum into a float and PostgreSQL's BIGINT would
# overflow past 2**63. One bound for every backend, so a wallet moved between them behaves alike.
MAX_TOTAL = 2**53 - 1

# Hold states.
HELD = "held"
CAPTURED = "captured"
VOIDED = "voided"
EXPIRED = "expired"  # voided by the sweeper (or on a late capture) because its time ran out


class WalletError(Exception):
    """Base of every wallet refusal; the message is safe to show an operator."""


class InsufficientCredits(WalletError):
    """The account's available credit does not cover the amount asked for."""

    def __init__(self, account: str, requested: int, available: int) -> None:
        super().__init__(
            f"insufficient credits on {account}: requested {requested}, available {available}"
        )
        self.account = account
        self.requested = requested
        self.available = available


class HoldNotFound(WalletError):
    """No hold has that id."""


class HoldNotActive(WalletError):
    """The hold was already captured, voided or expired (and the call was not a replay)."""

    def __init__(self, hold_id: str, status: str) -> None:
        super().__init__(f"hold {hold_id} is {status}")
        self.hold_id = hold_id
        self.status = status


class IdempotencyConflict(WalletError):
    """The key was already used on this account for a different operation (kind or amount).

    `first` is what the key already names (an Entry or a Hold) when the backend knows it, so
    a caller that treats the call as already handled can use it.
    """

    def __init__(self, account: str, key: str, first: Entry | Hold | None = None) -> None:
        super().__init__(
            f"idempotency key {key!r} on {account} was already used for a different operation"
        )
        self.account = account
        self.key = key
        self.first = first


class InvalidAmount(WalletError):
    """Amounts are positive integers (captures may be zero) and captures never exceed the hold."""


class BalanceLimitExceeded(InvalidAmount):
    """A credit would take the account's total past MAX_TOTAL (or is larger than it alone).

    Nothing changed: not the balance, not the ledger, and the idempotency key stays unused.
    """

    def __init__(self, account: str, amount: int, total: int | None = None) -> None:
        now = "" if total is None else f" (it has {format_credits(total)})"
        super().__init__(
            f"{account} cannot take {format_credits(amount)} more credits{now}: an account "
            f"holds at most {format_credits(MAX_TOTAL)} credits"
        )
        self.account = account
        self.amount = amount
        self.total = total
        self.limit = MAX_TOTAL


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's money at one instant, in millicredits."""

    account: str
    total: int
    held: int

    @property
    def available(self) -> int:
        return self.total - self.held


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger line. `amount` is signed: positive credits, negative captures/debits."""

    id: str
    account: str
    kind: str
    amount: int
    key: str
    reason: str
    created_at: datetime
    ref: str | None = None  # the entry this one compensates or reverses, the hold it captures
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hold:
    """Credit reserved before spending; captured (≤ amount) or voided exactly once."""

    id: str
    account: str
    amount: int
    key: str
    status: str
    created_at: datetime
    expires_at: datetime
    captured: int = 0
    entry_id: str | None = None  # the capture's ledger entry, once captured


@runtime_checkable
class Wallet(Protocol):
    """One interface, three backends (SQLite, PostgreSQL, Redis), chosen by URL."""

    async def credit(
        self,
        account: str,
        amount: int,
        key: str,
        reason: str,
        *,
        ref: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        """Add `amount` (> 0) to the account: top-ups, grants, refunds, compensation."""
        ...

    async def debit(
        self,
        account: str,
        amount: int,
        key: str,
        reason: str,
        *,
        ref: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        """Take `amount` (> 0) back, for an operator's reversal; refused past available."""
        ...

    async def hold(self, account: str, amount: int, key: str, ttl: float) -> Hold:
        """Reserve `amount` (> 0) for `ttl` seconds; InsufficientCredits if available < amount."""
        ...

    async def capture(
        self,
        hold_id: str,
        amount: int,
        *,
        reason: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        """Spend `amount` (0 ≤ amount ≤ held) of the hold and release the rest.

        A second capture of the same hold returns the first entry; a voided or expired hold
        raises HoldNotActive.
        """
        ...

    async def void(self, hold_id: str, reason: str = "") -> Hold:
        """Release the whole hold. Voiding a voided hold returns it; a captured one raises."""
        ...

    async def get_hold(self, hold_id: str) -> Hold:
        """The hold as it stands now (HoldNotFound if none)."""
        ...

    async def balance(self, account: str) -> Balance:
        """Total, held and available; an unknown account is all zeros."""
        ...

    async def entries(
        self, account: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Entry]:
        """The account's ledger, newest first."""
        ...

    async def get_entry(self, entry_id: str) -> Entry | None:
        """One ledger entry by id."""
        ...

    async def sweep(self, now: datetime | None = None) -> int:
        """Void every hold past its expiry; returns how many it voided."""
        ...

    async def accounts(self) -> list[str]:
        """Every account that has a ledger entry or a hold (for reconciliation and reports)."""
        ...

    async def open_holds(self) -> list[Hold]:
        """Every hold still in the held state (for reconciliation and metrics)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
