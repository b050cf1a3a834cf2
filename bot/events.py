"""What flows between an adapter and the core: a Message in, plain events out.

Adapters turn platform updates into a `Message`, call `Core.handle(message, stop=...)` and
render each event it yields. Platform limits (message length, flood control, XML, AES) are the
adapter's business; these types know nothing of any platform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A UTF-16 surrogate code point: paired ones make one character, a lone one is no character at
# all, and UTF-8 (the OpenAI client's JSON, the stores) cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (and a split pair joined again).

    A JSON "\\ud83d" escape without its partner (a client that cut an emoji in half, or an
    attacker) decodes to a lone surrogate, which raised UnicodeEncodeError deep in the OpenAI
    client. Text is made encodable once, where it enters the core: in `Message`.
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@dataclass(frozen=True, slots=True)
class Message:
    """One user message as the core sees it, whatever platform it came from."""

    platform: str  # "telegram", "wechat", "console"
    user_id: str  # the platform's user id
    chat_id: str  # where replies go (same as user_id in private chats)
    message_id: str  # unique per platform delivery; redeliveries repeat it
    text: str
    images: tuple[str, ...] = ()
    language: str | None = None  # the user's language code from the platform, if any
    user_name: str = ""
    is_private: bool = True
    # Whether the platform shows a reply while it streams (Telegram, console: yes; WeChat
    # sends only whole replies): decides what a reply cut short by the adapter costs.
    shows_partial: bool = True

    def __post_init__(self) -> None:
        """Whatever an adapter passed, the core sees only encodable text (see clean_text)."""
        for name in ("text", "user_name"):
            value = getattr(self, name)
            clean = clean_text(value) if isinstance(value, str) else value
            if clean is not value:
                object.__setattr__(self, name, clean)


@dataclass(frozen=True, slots=True)
class Action:
    """A button under an image: `label` to show, `data` to hand back to `Core.press`.

    `data` is at most 64 bytes (Telegram's callback_data limit).
    """

    label: str
    data: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of a reply being streamed."""

    text: str


@dataclass(frozen=True, slots=True)
class FinalText:
    """The whole reply (also the answer to a command). Always sent, even after deltas."""

    text: str
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """A long task (a Midjourney image) moved on."""

    task_id: str
    text: str
    percent: int | None = None
    image_url: str | None = None


@dataclass(frozen=True, slots=True)
class ImageResult:
    """A finished image with the actions that can follow it."""

    task_id: str
    url: str
    caption: str
    actions: tuple[Action, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Notice:
    """A short message that is not a model reply: errors, refusals, confirmations."""

    text: str
    kind: str = "info"  # "info", "error", "wait", "insufficient"


Event = TextDelta | FinalText | Progress | ImageResult | Notice


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event for a chat that arrives outside a `handle` call (a task resumed after restart)."""

    platform: str
    user_id: str
    chat_id: str
    event: Event
