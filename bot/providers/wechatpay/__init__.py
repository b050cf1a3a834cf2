"""WeChat Pay, the protocol: v2/v3 signing and verification, AES-GCM, XML, the HTTP client.

`signing` holds the pure functions, `client` the signed calls for one merchant account and the
verified reading of notifications. What a payment means for a user's credits (orders, the
credit, reconciliation) lives in `bot.payments.wechatpay`, on the payment inbox.
"""

from bot.providers.wechatpay.client import (
    NotifyAnswer,
    PayConfig,
    Prepay,
    TradeState,
    WeChatPayClient,
    accepted,
    is_v3_notification,
    refused,
    trade_from_v2,
    trade_from_v3,
)
from bot.providers.wechatpay.errors import NotifyRejected, PaymentError
from bot.providers.wechatpay.signing import (
    V3_MAX_SKEW_SECONDS,
    decrypt_v3,
    encrypt_v3,
    fresh_timestamp,
    from_xml,
    load_public_key,
    same_sign,
    sign_v2,
    sign_v3,
    to_xml,
    v2_answer,
    verify_v3,
)

__all__ = [
    "V3_MAX_SKEW_SECONDS",
    "NotifyAnswer",
    "NotifyRejected",
    "PayConfig",
    "PaymentError",
    "Prepay",
    "TradeState",
    "WeChatPayClient",
    "accepted",
    "decrypt_v3",
    "encrypt_v3",
    "fresh_timestamp",
    "from_xml",
    "is_v3_notification",
    "load_public_key",
    "refused",
    "same_sign",
    "sign_v2",
    "sign_v3",
    "to_xml",
    "trade_from_v2",
    "trade_from_v3",
    "v2_answer",
    "verify_v3",
]
