"""WeChat's 2048-byte text limit: pieces fit, decode, and add up to the reply."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.wechat.split import split_text


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=3000), st.integers(min_value=4, max_value=2048))
def test_pieces_fit_and_join_back(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert "".join(pieces) == text
    assert all(len(p.encode("utf-8")) <= limit for p in pieces)
    assert all(pieces) or pieces == [""]


def test_cuts_prefer_line_ends() -> None:
    text = ("第一段的内容。" * 40 + "\n") * 5
    pieces = split_text(text)
    assert len(pieces) > 1
    assert all(p.endswith("\n") for p in pieces[:-1])


def test_short_text_is_one_piece() -> None:
    assert split_text("你好") == ["你好"]
