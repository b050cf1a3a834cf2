"""The Telegram front end's own words (buttons, invoices, payment receipts), English and Chinese.

Everything a model or a command says comes from the core; these are only the texts that exist
because of Telegram itself.
"""

from __future__ import annotations

from bot.i18n import language_of

_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "stop": "⏹ Stop",
        "stop_not_yours": "Only the person who asked can stop this reply.",
        "stop_gone": "This reply has already finished.",
        "stopping": "Stopping…",
        "failed": "Something went wrong. Nothing was charged for what you did not get; "
        "please try again.",
        "image_fetch_failed": "The image is ready but could not be fetched. Please try again "
        "later or contact the operator.",
        "invoice_title": "{credits} credits",
        "invoice_description": "{credits} credits for {stars} Telegram Stars, added to your "
        "wallet as soon as the payment goes through.",
        "invoice_label": "{credits} credits",
        "topup_stars": "Or pay with Telegram Stars:",
        "payment_bad": "This invoice is no longer valid. Send /topup for a fresh one.",
        "payment_ok": "Payment received: +{credits} credits. Thank you!",
        "payment_unknown": "Your payment arrived but could not be matched to a pack. The operator "
        "has been told; reference: {charge}",
        "admin_only": "This command is for the operator only.",
        "refund_usage": "Usage: /refundstars USER_ID CHARGE_ID",
        "refund_failed": "The credits were taken back, but Telegram refused the Stars refund: "
        "{error}. Send the same /refundstars again to retry.",
        "refund_ok": "Refunded {charge}: {credits} credits taken back.",
        "refund_reverse_failed": "Nothing refunded: the credits could not be taken back: {error}",
        "pressed": "OK",
    },
    "zh": {
        "stop": "⏹ 停止",
        "stop_not_yours": "只有提问的人才能停止这条回复。",
        "stop_gone": "这条回复已经结束。",
        "stopping": "正在停止…",
        "failed": "出错了。没有收到的内容不会扣费，请重试。",
        "image_fetch_failed": "图片已生成，但下载失败。请稍后重试或联系运营者。",
        "invoice_title": "{credits} 积分",
        "invoice_description": "用 {stars} 颗 Telegram 星星购买 {credits} 积分，"
        "付款成功后立即到账。",
        "invoice_label": "{credits} 积分",
        "topup_stars": "也可以用 Telegram 星星支付：",
        "payment_bad": "这张账单已失效，请发送 /topup 获取新的账单。",
        "payment_ok": "已收到付款：+{credits} 积分。谢谢！",
        "payment_unknown": "已收到付款，但无法匹配套餐。已通知运营者；参考号：{charge}",
        "admin_only": "此命令仅限运营者使用。",
        "refund_usage": "用法：/refundstars 用户ID 付款ID",
        "refund_failed": "积分已收回，但 Telegram 拒绝退还星星：{error}。"
        "请再次发送同样的 /refundstars 重试。",
        "refund_ok": "已退款 {charge}：收回 {credits} 积分。",
        "refund_reverse_failed": "未退款：积分未能收回：{error}",
        "pressed": "好的",
    },
}


def tr(key: str, language: str | None, /, **values: object) -> str:
    """The text for `key` in the user's language (English when not Chinese)."""
    return _TEXTS[language_of(language)][key].format(**values)
