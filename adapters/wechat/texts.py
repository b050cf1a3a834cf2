"""The WeChat front end's own words. WeChat users may read either language, so each text
carries both: Simplified Chinese first, then English."""

from __future__ import annotations

FETCH_WORD = "1"


def welcome(trial_credits: int, *, wechat_pay: bool = False) -> str:
    """Said on subscribe; mentions the trial only when one was granted, and WeChat Pay only
    when it is configured."""
    zh = (
        "欢迎！直接发消息即可与 AI 对话；"
        "发送「画 描述」或 /imagine 描述 生成图片；/balance 查看余额；"
    )
    en = (
        "Welcome! Send a message to chat with the AI; "
        "画 or /imagine PROMPT draws a picture; /balance shows your credits; "
    )
    if wechat_pay:
        zh += "「充值 10」或 /pay 10 用微信支付充值 10 元；"
        en += "/pay 10 (or 充值 10) tops up ¥10 with WeChat Pay; "
    zh += "/topup 兑换码 兑换充值码。"
    en += "/topup CODE redeems a code."
    if trial_credits > 0:
        zh += f"\n已赠送试用额度 {trial_credits} 积分。"
        en += f"\nYou received {trial_credits} trial credits."
    return f"{zh}\n\n{en}"


def still_working() -> str:
    """The last retry's answer when the reply is not ready: the user fetches it with "1"."""
    return "正在生成回答，请稍后回复 1 获取。\nStill working on it: reply 1 to get the answer."


def more_waiting() -> str:
    """Footer of a passive reply when more of it (or another reply) is waiting."""
    return "\n\n（回复 1 查看后续 / reply 1 for more）"


def nothing_waiting_yet() -> str:
    """A "1" while the answer is still being written."""
    return (
        "回答还在生成中，请稍后再回复 1。\nThe answer is not ready yet: reply 1 again in a moment."
    )


def unsupported() -> str:
    return "暂时只支持文字消息。\nOnly text messages are supported for now."


def image_actions() -> str:
    """Under a finished image: WeChat has no buttons, so actions are words."""
    return (
        "回复 U1–U4 放大，V1–V4 变体，重绘 重新生成。\n"
        "Reply U1–U4 to upscale, V1–V4 for variations, reroll to draw again."
    )


def no_image() -> str:
    return (
        "没有可操作的图片，请先发送「画 描述」。\n"
        "No image to act on yet: send 画 or /imagine PROMPT first."
    )


def no_such_action(token: str) -> str:
    return f"这张图片不支持 {token}。\nThat image has no {token} action."


def image_link(url: str) -> str:
    """When an image could not be uploaded to WeChat, the link is the next best thing."""
    return f"图片上传失败，可以打开链接查看：\nThe image could not be sent; open it here:\n{url}"


def failed() -> str:
    return "出错了，请稍后再试。\nSomething went wrong, please try again."


# --- WeChat Pay top-ups (/pay AMOUNT, 充值 AMOUNT) ----------------------------------------------


def pay_link(cny: str, credits: str, url: str, minutes: int, *, with_qr: bool) -> str:
    """The offer: the JSAPI pay page's link (and, under a QR code image, how to use it)."""
    zh = f"充值 ¥{cny}，得 {credits} 积分。点击链接用微信支付（{minutes} 分钟内有效）："
    en = f"Top up ¥{cny} for {credits} credits: tap the link to pay (valid {minutes} min):"
    if with_qr:
        zh += "\n也可以用另一台设备的微信扫描上面的二维码支付。"
        en += "\nOr scan the QR code above with WeChat on another device."
    return f"{zh}\n{en}\n{url}"


def pay_help() -> str:
    """Added to /help, /start and a bare /topup in WeChat when WeChat Pay is configured."""
    return (
        "\n\n微信支付充值：发送「充值 金额」或 /pay 金额，例如「充值 10」（1 元 = 10000 积分）。\n"
        "WeChat Pay: send /pay AMOUNT (or 充值 AMOUNT) in CNY, e.g. /pay 10 (¥1 = 10000 credits)."
    )


def pay_usage(low: int, high: int) -> str:
    """充值 / /pay without an amount."""
    return (
        f"请发送「充值 金额」，例如「充值 10」（{low}–{high} 元，1 元 = 10000 积分）。\n"
        f"Send /pay AMOUNT in CNY, e.g. /pay 10 (¥{low}–{high}; ¥1 = 10000 credits)."
    )


def pay_bad_amount(low: int, high: int) -> str:
    return (
        f"金额无效：请输入 {low} 到 {high} 元之间的金额，最多两位小数，例如「充值 9.9」。\n"
        f"Invalid amount: send ¥{low} to ¥{high} with at most 2 decimals, e.g. /pay 9.9."
    )


def pay_not_configured() -> str:
    """WeChat Pay is not set up for this bot: codes are the way to top up."""
    return (
        "暂不支持微信支付充值。请向运营者购买兑换码，然后发送 /topup 兑换码。\n"
        "WeChat Pay is not available here. Buy a code from the operator and send /topup CODE."
    )


def pay_unavailable() -> str:
    """WeChat Pay refused the order or could not be reached: nothing was charged."""
    return (
        "微信支付暂时无法下单，请稍后再试，或用 /topup 兑换码 充值。\n"
        "WeChat Pay could not create the order; please try again later, or use /topup CODE."
    )
