"""Checks a Telegram HTML part the way Telegram would: only its tags, balanced, and short."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from adapters.telegram.render import utf16_len

_TAG = re.compile(r"</?[a-z-]+(?: [a-z]+=\"[^\"<>]*\")?>")
_BAD_AMP = re.compile(r"&(?!(?:amp|lt|gt|quot|#\d+);)")
ALLOWED = {"b", "i", "s", "u", "code", "pre", "a", "blockquote", "tg-spoiler", "span"}


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED:
            self.errors.append(f"tag <{tag}> is not Telegram's")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_part(part: str, limit: int = 4096) -> str:
    """Assert `part` is valid Telegram HTML within `limit`; returns its visible text."""
    assert utf16_len(part) <= limit, f"part of {utf16_len(part)} units"
    parser = _Balance()
    parser.feed(part)
    parser.close()
    assert not parser.errors, parser.errors
    assert not parser.stack, f"unclosed {parser.stack}"
    bare = _TAG.sub("", part)
    assert "<" not in bare and ">" not in bare, "a raw angle bracket outside a tag"
    assert not _BAD_AMP.search(bare), "an unescaped &"
    return "".join(parser.text)
