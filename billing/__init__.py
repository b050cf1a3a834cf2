"""Pure money: prices, token counts and the ledger wallet. No chat, no platform, no HTTP."""

from billing.wallet import open_wallet
from billing.wallet.base import (
    MAX_TOTAL,
    Balance,
    BalanceLimitExceeded,
    Entry,
    Hold,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    Wallet,
    WalletError,
)

__all__ = [
    "MAX_TOTAL",
    "Balance",
    "BalanceLimitExceeded",
    "Entry",
    "Hold",
    "HoldNotActive",
    "HoldNotFound",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InvalidAmount",
    "Wallet",
    "WalletError",
    "open_wallet",
]
