"""The WeChat front end's own words. WeChat users may read either language, so each text
carries both: Simplified Chinese first, then English."""

from __future__ import annotations

FETCH_WORD = "1"


def welcome(trial_credits: int) -> str:
    """Said on subscribe; mentions the trial only when one was granted."""
    zh = (
        "欢迎！直接发消息即可与 AI 对话；"
        "发送「画 描述」或 /imagine 描述 生成图片；/balance 查看余额。"
    )
    en = (
        "Welcome! Send a message to chat with the AI; "
        "画 or /imagine PROMPT draws a picture; /balance shows your credits."
    )
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
