"""WeChat's text limit is 2048 bytes of UTF-8 per message: cut long replies to fit.

Cuts fall on a paragraph, line or word boundary when one is near the end of a piece, and
never inside a character, so every piece decodes on its own.
"""

from __future__ import annotations

MAX_TEXT_BYTES = 2048

# A boundary this close to the end of a piece is worth the shorter piece.
_LOOKBACK = 400


def split_text(text: str, limit: int = MAX_TEXT_BYTES) -> list[str]:
    """Split `text` into pieces of at most `limit` UTF-8 bytes, in order, losing nothing.

    Whitespace at a cut is kept at the end of the earlier piece, so joining the pieces gives
    back the text exactly.
    """
    if limit < 4:
        raise ValueError("limit must leave room for one UTF-8 character (4 bytes)")
    data = text.encode("utf-8")
    pieces: list[str] = []
    start = 0
    while len(data) - start > limit:
        end = start + limit
        # Step back to a character start: continuation bytes look like 0b10xxxxxx.
        while end > start and (data[end] & 0xC0) == 0x80:
            end -= 1
        cut = _boundary(data, start, end)
        pieces.append(data[start:cut].decode("utf-8"))
        start = cut
    if start < len(data) or not pieces:
        pieces.append(data[start:].decode("utf-8"))
    return pieces


def _boundary(data: bytes, start: int, end: int) -> int:
    """The best cut in data[start:end]: after a blank line, a newline, a space, else `end`."""
    floor = max(start + 1, end - _LOOKBACK)
    for sep in (b"\n\n", b"\n", "。".encode(), b". ", b" "):
        at = data.rfind(sep, floor, end)
        if at != -1 and at + len(sep) <= end:
            return at + len(sep)
    return end
