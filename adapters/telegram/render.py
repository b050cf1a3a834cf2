"""The model's Markdown as Telegram HTML that Telegram always accepts, split into messages.

Models write whatever they like: unbalanced `**`, raw HTML, `<script>`, endless lines. Telegram
refuses a whole message over one broken tag, so everything is escaped first and only tags we
emit ourselves, always properly nested, reach the wire. Long replies are split at newlines or
spaces, closing the open tags at the end of a part and reopening them at the start of the next.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\[([^\[\]\n]+)\]\((https?://[^\s()<>\"]+)\)")
_DELIM = re.compile(r"\*\*|__|~~|\*|_")
_TAG_OF = {"**": "b", "__": "b", "*": "i", "_": "i", "~~": "s"}
_LANG = re.compile(r"[^\w+#.-]")


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def markdown_to_html(markdown: str) -> str:
    """Render Markdown as Telegram HTML: escaped text, code blocks, inline code, balanced emphasis.

    An unclosed code fence (a reply still streaming) runs to the end as code.
    """
    out: list[str] = []
    lines = markdown.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence:
            marker, lang = fence.group(1), _LANG.sub("", fence.group(2))[:32]
            body: list[str] = []
            i += 1
            while i < len(lines):
                stripped = lines[i].strip()
                if stripped.startswith(marker[0] * len(marker)) and not stripped.strip(marker[0]):
                    i += 1
                    break
                body.append(lines[i])
                i += 1
            code = html.escape("\n".join(body), quote=False)
            attr = f' class="language-{lang}"' if lang else ""
            out.append(f"<pre><code{attr}>{code}</code></pre>")
            continue
        heading = _HEADING.match(lines[i])
        if heading:
            out.append(f"<b>{_inline(heading.group(1))}</b>")
        else:
            out.append(_inline(lines[i]))
        i += 1
    return "\n".join(out)


@dataclass
class _Delim:
    """An emphasis marker waiting to learn whether it opens, closes or stays literal."""

    text: str
    can_open: bool
    can_close: bool
    tag: str = ""  # set when paired: "<b>", "</b>", ...


def _inline(line: str) -> str:
    """One line: code spans and links are atoms; emphasis pairs only when balanced."""
    tokens: list[str | _Delim] = []
    pos = 0
    for atom in _atoms(line):
        start, end, rendered = atom
        _emphasis_tokens(line, pos, start, tokens)
        tokens.append(rendered)
        pos = end
    _emphasis_tokens(line, pos, len(line), tokens)

    stack: list[_Delim] = []
    for token in tokens:
        if not isinstance(token, _Delim):
            continue
        opener = next((d for d in reversed(stack) if d.text == token.text), None)
        if token.can_close and opener is not None:
            while stack[-1] is not opener:  # anything opened inside stays literal
                stack.pop()
            stack.pop()
            tag = _TAG_OF[token.text]
            opener.tag, token.tag = f"<{tag}>", f"</{tag}>"
        elif token.can_open:
            stack.append(token)
    for d in stack:
        d.tag = ""
    return "".join(
        (t.tag or html.escape(t.text, quote=False)) if isinstance(t, _Delim) else t for t in tokens
    )


def _atoms(line: str) -> list[tuple[int, int, str]]:
    """Code spans and http(s) links as (start, end, html), left to right, never overlapping."""
    found: list[tuple[int, int, str]] = []
    for m in _CODE_SPAN.finditer(line):
        found.append((m.start(), m.end(), f"<code>{html.escape(m.group(2), quote=False)}</code>"))
    for m in _LINK.finditer(line):
        if any(s < m.end() and m.start() < e for s, e, _ in found):
            continue
        href = html.escape(m.group(2), quote=True)
        found.append((m.start(), m.end(), f'<a href="{href}">{html.escape(m.group(1))}</a>'))
    return sorted(found)


def _emphasis_tokens(line: str, start: int, end: int, tokens: list[str | _Delim]) -> None:
    """Plain text between atoms: escaped runs and emphasis markers with their flanking."""
    pos = start
    for m in _DELIM.finditer(line, start, end):
        if m.start() > pos:
            tokens.append(html.escape(line[pos : m.start()], quote=False))
        before = line[m.start() - 1] if m.start() > 0 else " "
        after = line[m.end()] if m.end() < len(line) else " "
        can_open = not after.isspace()
        can_close = not before.isspace()
        if m.group(0)[0] == "_" and before.isalnum() and after.isalnum():
            can_open = can_close = False  # snake_case stays as written
        tokens.append(_Delim(m.group(0), can_open, can_close))
        pos = m.end()
    if end > pos:
        tokens.append(html.escape(line[pos:end], quote=False))


_TOKEN = re.compile(r"<(/?)([a-z]+)[^>]*>|[^<]+")
_ENTITY_TAIL = re.compile(r"&[#\w]*$")


def split_html(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split HTML we rendered into parts of at most `limit` UTF-16 units, each valid on its own.

    Cuts prefer a newline, then a space, in the second half of the room; tags open at a cut are
    closed at the end of the part and reopened at the start of the next. Parts without visible
    text are dropped.
    """
    parts: list[str] = []
    stack: list[tuple[str, str]] = []  # (name, opening tag)
    cur: list[str] = []
    cur_len = 0

    def closing() -> int:
        return sum(len(name) + 3 for name, _ in stack)

    def flush() -> None:
        nonlocal cur, cur_len
        closed = "".join(cur) + "".join(f"</{name}>" for name, _ in reversed(stack))
        if _visible(closed).strip():
            parts.append(closed)
        cur = [tag for _, tag in stack]
        cur_len = sum(len(tag) for tag in cur)

    for m in _TOKEN.finditer(text):
        if m.group(2):  # a tag
            tag, name = m.group(0), m.group(2)
            if m.group(1):
                cur.append(tag)
                cur_len += len(tag)
                if stack:
                    stack.pop()
                continue
            if cur_len + len(tag) + len(name) + 3 + closing() > limit:
                flush()
            cur.append(tag)
            cur_len += len(tag)
            stack.append((name, tag))
            continue
        chunk = m.group(0)
        while chunk:
            room = limit - cur_len - closing()
            size = utf16_len(chunk)
            if size <= room:
                cur.append(chunk)
                cur_len += size
                break
            fresh = cur_len == sum(len(tag) for _, tag in stack)
            cut = _cut(chunk, room, anywhere=cur_len >= limit // 2)
            if cut == 0 and fresh:  # not even one entity fits a fresh part: give it its own
                cut = chunk.find(";") + 1 if chunk.startswith("&") else 1
            if cut > 0:
                cur.append(chunk[:cut])
                chunk = chunk[cut:]
            flush()
    flush()
    return parts


def _cut(chunk: str, room: int, *, anywhere: bool) -> int:
    """Where to cut escaped text to fit `room` units: a newline, a space, else as far as fits."""
    end = 0
    used = 0
    for ch in chunk:
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > room:
            break
        end += 1
    head = chunk[:end]
    tail = _ENTITY_TAIL.search(head)  # never cut "&amp;" in two
    if tail:
        end = tail.start()
        head = chunk[:end]
    floor = 0 if anywhere else end // 2
    for sep in ("\n", " "):
        at = head.rfind(sep)
        if at >= floor and at > 0:
            return at + 1
    return end


def _visible(part: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", part))


def render_parts(markdown: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Markdown straight to the HTML messages that carry it."""
    return split_html(markdown_to_html(markdown), limit)


def plain_text(part: str) -> str:
    """The visible text of a rendered part (a last resort if Telegram refuses the HTML)."""
    return _visible(part)
