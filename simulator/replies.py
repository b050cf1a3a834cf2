"""What the simulator says: deterministic replies, exact token counts, fault markers, images.

Replies are derived from a hash of the prompt and counted with `billing.tokens`, the same
counts the bot bills, so a test can predict a reply's cost.
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
import zlib
from typing import Any

FAULT_MARKER = re.compile(r"\[\[fault:([a-z0-9_]+)\]\]")
TOKENS_MARKER = re.compile(r"\[\[tokens:(\d+)\]\]")

_SENTENCES = (
    "The quick answer is that good ideas grow from small steps and careful notes.",
    "A simple plan helps you see what matters first, then you can test it again.",
    "Many people find that reading a little every day makes the work feel lighter.",
    "When the weather is calm, a long walk by the river clears the mind.",
    "Try to write down one question, look for two sources, and compare what they say.",
    "The best tools are the ones you understand well enough to trust.",
    "Good code is easy to read, easy to change, and honest about its limits.",
    "A warm cup of tea and a quiet room can turn a hard task into a fair one.",
    "This is a simulated reply, so the sentences come from a short list.",
    "Every word of it was counted with the same tokenizer the bot bills with.",
)

_OPENERS = (
    "Sure.",
    "Here is a short answer.",
    "Good question.",
    "Let me think about that.",
    "In short:",
    "Happy to help.",
)


# --- tokens ---------------------------------------------------------------------------


def tokens_module():  # -> module billing.tokens
    """billing.tokens, imported late so the rest of the simulator loads without it."""
    from billing import tokens

    return tokens


def truncate(model: str, text: str, limit: int) -> str:
    """The longest prefix of `text` that counts at most `limit` tokens."""
    tokens = tokens_module()
    if tokens.count_text(model, text) <= limit:
        return text
    enc = tokens.encoding_for(model)
    ids = enc.encode(text)
    cut = min(limit, len(ids))
    while cut > 0:
        prefix = enc.decode(ids[:cut])
        if tokens.count_text(model, prefix) <= limit:
            return prefix
        cut -= 1
    return ""


# --- replies ----------------------------------------------------------------------------


def reply_text(prompt: str, sentences: int | None = None) -> str:
    """A deterministic, readable English reply for a prompt."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    count = sentences if sentences is not None else rng.randint(1, 3)
    start = rng.randrange(len(_SENTENCES))
    chosen = [_SENTENCES[(start + i) % len(_SENTENCES)] for i in range(count)]
    return " ".join([rng.choice(_OPENERS), *chosen])


def exact_tokens(model: str, prompt: str, n: int) -> str:
    """A reply that counts exactly `n` tokens (as exact as BPE allows)."""
    if n <= 0:
        return ""
    tokens = tokens_module()
    text = reply_text(prompt, sentences=n // 8 + 2)
    while tokens.count_text(model, text) < n:
        text += " " + reply_text(text, sentences=len(_SENTENCES))
    return truncate(model, text, n)


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def split_chunks(text: str) -> list[str]:
    """Split into stream deltas of one or two words, keeping every character."""
    words = re.findall(r"\s*\S+", text)
    if not words:
        return []
    chunks = ["".join(words[i : i + 2]) for i in range(0, len(words), 2)]
    tail = text[sum(map(len, chunks)) :]
    if tail:
        chunks[-1] += tail
    return chunks


def png(seed: str, size: int = 32) -> bytes:
    """A small valid PNG, one colour per seed (no imaging library needed)."""
    digest = hashlib.sha256(seed.encode()).digest()
    rgb = bytes(digest[:3])
    row = b"\x00" + rgb * size
    raw = row * size

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
