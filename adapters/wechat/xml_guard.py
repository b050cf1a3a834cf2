"""Hostile XML stops here, before wechatpy (xmltodict/expat) ever sees it.

WeChat's callbacks are small flat XML documents with no DTD. Anything else is refused:
bodies over the cap are cut off while reading (never buffered whole), and any DOCTYPE,
ENTITY or processing trick (billion laughs, quadratic blow-up, XXE) is refused before a
parser runs; defusedxml then parses with DTDs, entities and external references forbidden.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import ParseError

from aiohttp import web
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAX_BODY_BYTES = 64 * 1024

_FORBIDDEN = re.compile(rb"<!\s*(doctype|entity|element|attlist)|<!\[\s*(include|ignore)", re.I)
# User text travels in CDATA and may well contain "<!DOCTYPE": only markup outside it counts.
_CDATA = re.compile(rb"<!\[CDATA\[.*?\]\]>", re.S)


class BadXml(ValueError):
    """The body is not a callback we will parse; the endpoint answers 400."""


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read at most `limit` bytes of the body; raise BadXml as soon as it is longer."""
    if request.content_length is not None and request.content_length > limit:
        raise BadXml("body too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(min(16 * 1024, limit + 1 - size))
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise BadXml("body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_flat(data: bytes) -> dict[str, str]:
    """Check `data` is a safe `<xml>` document and return its top-level fields as text."""
    if not data.strip():
        raise BadXml("empty body")
    if _FORBIDDEN.search(_CDATA.sub(b"", data)):
        raise BadXml("DTDs and entity declarations are not accepted")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadXml("body is not UTF-8") from exc
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise BadXml(f"malformed XML: {type(exc).__name__}") from exc
    if root.tag != "xml":
        raise BadXml("root element is not <xml>")
    return {child.tag: (child.text or "") for child in root}
