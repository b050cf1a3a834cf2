"""Raw Telegram updates, as the Bot API would deliver them, for feeding the dispatcher."""

from __future__ import annotations

import itertools
import time
from typing import Any

from fakes.telegram_api import BOT_ID, BOT_USERNAME

_update_ids = itertools.count(1)
_message_ids = itertools.count(1)

ALICE = 1001
BOB = 1002
GROUP = -100500


def user(user_id: int, language: str = "en") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": f"U{user_id}", "language_code": language}


def chat(chat_id: int) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": f"U{chat_id}"}
    return {"id": chat_id, "type": "supergroup", "title": "Group"}


def message(
    text: str,
    *,
    user_id: int = ALICE,
    chat_id: int | None = None,
    language: str = "en",
    reply_to_bot: bool = False,
    update_id: int | None = None,
    message_id: int | None = None,
) -> dict[str, Any]:
    """A text message update; commands and @mentions get their entities as Telegram adds them."""
    chat_id = user_id if chat_id is None else chat_id
    body: dict[str, Any] = {
        "message_id": message_id or next(_message_ids),
        "date": int(time.time()),
        "chat": chat(chat_id),
        "from": user(user_id, language),
        "text": text,
    }
    entities = []
    if text.startswith("/"):
        entities.append({"type": "bot_command", "offset": 0, "length": len(text.split()[0])})
    mention = f"@{BOT_USERNAME}"
    if mention in text:
        entities.append({"type": "mention", "offset": text.index(mention), "length": len(mention)})
    if entities:
        body["entities"] = entities
    if reply_to_bot:
        body["reply_to_message"] = {
            "message_id": 1,
            "date": int(time.time()),
            "chat": chat(chat_id),
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Credit"},
            "text": "earlier reply",
        }
    return {"update_id": update_id or next(_update_ids), "message": body}


def photo(caption: str = "", **kw: Any) -> dict[str, Any]:
    """A photo message (two sizes, as Telegram sends them), with `caption` if given."""
    update = message("", **kw)
    body = update["message"]
    del body["text"]
    body["photo"] = [
        {"file_id": "small-id", "file_unique_id": "s1", "width": 90, "height": 90},
        {"file_id": "large-id", "file_unique_id": "l1", "width": 1280, "height": 1280},
    ]
    if caption:
        body["caption"] = caption
    return update


def callback(
    data: str,
    *,
    user_id: int,
    chat_id: int,
    message_id: int,
    query_id: str | None = None,
) -> dict[str, Any]:
    update_id = next(_update_ids)
    return {
        "update_id": update_id,
        "callback_query": {
            "id": query_id or f"cq{update_id}",
            "from": user(user_id),
            "chat_instance": "ci",
            "data": data,
            "message": {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": chat(chat_id),
                "from": {"id": BOT_ID, "is_bot": True, "first_name": "Credit"},
                "photo": [{"file_id": "p", "file_unique_id": "p", "width": 1, "height": 1}],
            },
        },
    }


def draft_stopped(chat_id: int, draft_id: int) -> dict[str, Any]:
    return {
        "update_id": next(_update_ids),
        "stopped_message_generation": {"chat": chat(chat_id), "draft_id": draft_id},
    }


def pre_checkout(
    payload: str, *, user_id: int, total: int, currency: str = "XTR"
) -> dict[str, Any]:
    update_id = next(_update_ids)
    return {
        "update_id": update_id,
        "pre_checkout_query": {
            "id": f"pcq{update_id}",
            "from": user(user_id),
            "currency": currency,
            "total_amount": total,
            "invoice_payload": payload,
        },
    }


def paid(
    payload: str, *, user_id: int, total: int, charge_id: str, update_id: int | None = None
) -> dict[str, Any]:
    return {
        "update_id": update_id or next(_update_ids),
        "message": {
            "message_id": next(_message_ids),
            "date": int(time.time()),
            "chat": chat(user_id),
            "from": user(user_id),
            "successful_payment": {
                "currency": "XTR",
                "total_amount": total,
                "invoice_payload": payload,
                "telegram_payment_charge_id": charge_id,
                "provider_payment_charge_id": "",
            },
        },
    }
