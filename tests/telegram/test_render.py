"""The model's Markdown always becomes HTML Telegram accepts, split where it stays valid."""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.telegram.render import markdown_to_html, render_parts
from tests.telegram.html_check import check_part


def visible(parts: list[str]) -> str:
    return "".join(check_part(p) for p in parts)


def squash(text: str) -> str:
    return "".join(text.split())


def test_formatting_the_model_meant_is_kept() -> None:
    out = markdown_to_html("**bold** _it_ `x < y` ~~gone~~\n```python\nif a < b:\n    pass\n```")
    assert "<b>bold</b>" in out
    assert "<i>it</i>" in out
    assert "<code>x &lt; y</code>" in out
    assert "<s>gone</s>" in out
    assert '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>' in out


def test_raw_html_and_script_are_shown_as_text() -> None:
    parts = render_parts(
        '<script>alert("x")</script> <b onclick=1>hi</b> &amp; <a href=javascript:1>'
    )
    text = visible(parts)
    assert '<script>alert("x")</script>' in text
    assert "<script" not in "".join(parts)
    assert "&amp;amp;" in "".join(parts)  # the model's "&amp;" is shown literally


def test_unbalanced_markdown_stays_literal() -> None:
    for source, shown in [
        ("**never closed", "**never closed"),
        ("*a **b* c**", "a **b c**"),
        ("__x_ **y", "__x_ **y"),
        ("```\nunclosed fence <i>", "unclosed fence <i>"),
        ("`odd <b>", "`odd <b>"),
    ]:
        assert visible(render_parts(source)) == shown


def test_long_reply_is_split_into_valid_parts_that_keep_every_character() -> None:
    paragraph = "Some **bold words** and `code` here. " * 40
    code = "```python\n" + "\n".join(f"x_{i} = a < b and c & d" for i in range(300)) + "\n```"
    source = "\n\n".join([paragraph, code, paragraph, "_tail_"])
    parts = render_parts(source)
    assert len(parts) >= 4
    text = visible(parts)
    expected = html.unescape(re.sub(r"<[^>]+>", "", markdown_to_html(source)))
    assert squash(text) == squash(expected)
    # a code block cut in two is closed at the end of one part and reopened in the next
    cut = [p for p in parts if p.startswith('<pre><code class="language-python">')]
    assert len(cut) >= 2


def test_ten_thousand_characters_of_anything() -> None:
    for source in ["a" * 10_000, "&" * 10_000, "<" * 10_000, "😀" * 10_000, "**" * 5_000]:
        parts = render_parts(source)
        text = visible(parts)
        assert squash(text) == squash(source) or source == "**" * 5_000


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"ab *_~`#[]()<>&;\n\"'😀", "```", "**", "http://x.y/?a&b"]),
        max_size=200,
    ).map("".join),
    st.integers(min_value=40, max_value=300),
)
def test_any_input_at_any_limit_gives_valid_parts(source: str, limit: int) -> None:
    for part in render_parts(source, limit):
        check_part(part, limit)
