"""The callback URL WeChat calls: signatures, AES envelopes and XML, then the front end.

Order matters for hostile traffic: the query signature is checked before the body is read
(403, nothing processed), the body is read with a cap (400), screened for DTDs and parsed
with defusedxml (400); only then does wechatpy see it. In safe mode (`encrypt_type=aes`,
also used by compatible mode) the envelope's msg_signature is checked and the inner XML is
screened the same way; replies to an encrypted request are encrypted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.crypto import _get_signature as envelope_signature
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.messages import BaseMessage
from wechatpy.replies import BaseReply
from wechatpy.utils import check_signature

from adapters.wechat.xml_guard import MAX_BODY_BYTES, BadXml, parse_flat, read_body

log = logging.getLogger(__name__)

Handler = Callable[[BaseMessage], Awaitable[BaseReply | None]]


class Endpoint:
    """aiohttp handlers for one Official Account."""

    def __init__(
        self,
        token: str,
        handler: Handler,
        *,
        appid: str = "",
        aes_key: str = "",
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.token = token
        self.handler = handler
        self.crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None
        self.max_body = max_body

    def add_routes(self, app: web.Application, path: str) -> None:
        app.router.add_get(path, self.verify)
        app.router.add_post(path, self.callback)

    def _signed(self, request: web.Request) -> bool:
        q = request.query
        try:
            check_signature(
                self.token, q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", "")
            )
        except InvalidSignatureException:
            return False
        return True

    async def verify(self, request: web.Request) -> web.StreamResponse:
        """WeChat's URL check when the operator saves the server settings: echo echostr."""
        q = request.query
        if not self._signed(request):
            raise web.HTTPForbidden(text="bad signature")
        echostr = q.get("echostr", "")
        if "msg_signature" in q:
            expected = envelope_signature(
                self.token, q.get("timestamp", ""), q.get("nonce", ""), echostr
            )
            if expected != q["msg_signature"]:
                raise web.HTTPForbidden(text="bad signature")
        return web.Response(text=echostr)

    async def callback(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if not self._signed(request):
            log.info("wechat: callback with a bad signature refused")
            raise web.HTTPForbidden(text="bad signature")
        encrypted = q.get("encrypt_type", "raw").lower() == "aes"
        try:
            body = await read_body(request, self.max_body)
            fields = parse_flat(body)
            if encrypted:
                xml = self._open(fields, q)
                parse_flat(xml.encode("utf-8"))
            else:
                xml = body.decode("utf-8")
            message = parse_message(xml)
        except BadXml as exc:
            log.info("wechat: callback refused: %s", exc)
            return await _refuse(request)
        except InvalidSignatureException:
            log.info("wechat: callback with a bad msg_signature refused")
            raise web.HTTPForbidden(text="bad signature") from None
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            log.info("wechat: callback not understood: %s", type(exc).__name__)
            raise web.HTTPBadRequest(text="bad request") from None
        reply = await self.handler(message)
        if reply is None:
            return web.Response(text="success")
        rendered = reply.render()
        if encrypted and self.crypto is not None:
            rendered = self.crypto.encrypt_message(
                rendered, q.get("nonce", ""), q.get("timestamp") or None
            )
        return web.Response(text=rendered, content_type="application/xml")

    def _open(self, fields: dict[str, str], q: Mapping[str, str]) -> str:
        """Check the envelope's msg_signature and decrypt it (safe and compatible modes)."""
        if self.crypto is None:
            raise BadXml("encrypted callback but WECHAT_AES_KEY is not set")
        if not fields.get("Encrypt"):
            raise BadXml("no Encrypt field")
        try:
            return self.crypto.decrypt_message(
                {"Encrypt": fields["Encrypt"]},
                q.get("msg_signature", ""),
                q.get("timestamp", ""),
                q.get("nonce", ""),
            )
        except InvalidSignatureException:
            raise
        except InvalidAppIdException as exc:
            raise InvalidSignatureException() from exc
        except Exception as exc:  # bad base64, padding, lengths: a forged or broken envelope
            raise BadXml(f"cannot decrypt: {type(exc).__name__}") from exc


async def _refuse(request: web.Request) -> web.StreamResponse:
    """400, then hang up: the rest of an oversized body is never read.

    `Response.force_close()` alone only drops keep-alive: aiohttp would still linger for up
    to 10 s reading and discarding the body after the answer (and a server shutting down
    waits for that). Closing the connection once the answer is out ends it at once.
    """
    refused = web.Response(status=400, text="bad request")
    refused.force_close()
    await refused.prepare(request)
    await refused.write_eof()
    request.protocol.force_close()
    return refused
