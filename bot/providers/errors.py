"""What can go wrong upstream, sorted by what the core does about it.

Every error is an `UpstreamError` with a `kind` the core can switch on; the subclasses exist so
the billing rule for each case (void, trim and retry, charge the received text) is one
`except` clause away.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream refused or failed. `message` is the API's own text (safe to log: no secrets)."""

    kind: str = "error"

    def __init__(
        self,
        message: str = "",
        *,
        kind: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message
        if kind is not None:
            self.kind = kind
        self.status = status
        self.code = code


class QuotaExceeded(UpstreamError):
    """429 insufficient_quota: the operator's account is out of money; retrying cannot help."""

    kind = "quota"


class RateLimited(UpstreamError):
    """429 rate_limit_exceeded that outlasted the bounded retries."""

    kind = "rate_limited"


class ContextLengthExceeded(UpstreamError):
    """400 context_length_exceeded: the core trims the conversation and tries once more."""

    kind = "context_length"


class UpstreamUnavailable(UpstreamError):
    """5xx, timeouts or connection errors before any output, after the bounded retries."""

    kind = "unavailable"


class StreamCut(UpstreamError):
    """The stream broke (or ended without usage) after output: charge what was received."""

    kind = "cut"

    def __init__(self, received_text: str, message: str = "stream cut", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.received_text = received_text
