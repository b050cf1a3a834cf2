"""What can go wrong talking to WeChat Pay, and a notification that must credit nothing."""

from __future__ import annotations


class PaymentError(Exception):
    """A WeChat Pay API call failed: refused, unreachable, busy, or an answer that does not verify.

    The message is safe to log and show an operator (no keys, no signatures).
    """


class NotifyRejected(Exception):
    """A notification that must credit nothing; `reason` is safe to log (no secrets)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
