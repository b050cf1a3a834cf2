"""Plays the WeChat server's side of a callback: signed (and, in safe mode, encrypted)
requests to the bot's endpoint, with WeChat's timeout and retries."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import xmltodict
from wechatpy.crypto import WeChatCrypto

_ids = itertools.count(int(time.time() * 1000))


def next_msg_id() -> int:
    return next(_ids)


def sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def text_xml(openid: str, content: str, msg_id: int, account: str = "gh_bot") -> str:
    content = content.replace("]]>", "]]]]><![CDATA[>")  # as any XML writer must
    return (
        f"<xml><ToUserName><![CDATA[{account}]]></ToUserName>"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )


def image_xml(openid: str, msg_id: int, account: str = "gh_bot") -> str:
    """A picture message, as WeChat forwards one (PicUrl and MediaId)."""
    return (
        f"<xml><ToUserName><![CDATA[{account}]]></ToUserName>"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[image]]></MsgType>"
        f"<PicUrl><![CDATA[http://mmbiz.example/pic{msg_id}]]></PicUrl>"
        f"<MediaId><![CDATA[media{msg_id}]]></MediaId><MsgId>{msg_id}</MsgId></xml>"
    )


def event_xml(openid: str, event: str, create_time: int, account: str = "gh_bot") -> str:
    return (
        f"<xml><ToUserName><![CDATA[{account}]]></ToUserName>"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[{event}]]></Event></xml>"
    )


@dataclass
class Reply:
    status: int
    body: str
    fields: dict[str, Any] | None  # the (decrypted) reply XML, None for "success"/errors

    @property
    def content(self) -> str | None:
        return None if self.fields is None else self.fields.get("Content")


class WeChatServer:
    """Sends callbacks the way WeChat does."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        aes_key: str = "",
        appid: str = "",
        session: aiohttp.ClientSession,
    ) -> None:
        self.url = url
        self.token = token
        self.crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None
        self.session = session

    def _query(self, *, bad_signature: bool = False) -> dict[str, str]:
        timestamp, nonce = str(int(time.time())), f"n{next(_ids)}"
        signature = sign(self.token, timestamp, nonce)
        if bad_signature:
            signature = "0" * 40
        return {"signature": signature, "timestamp": timestamp, "nonce": nonce}

    async def post_raw(
        self,
        body: bytes | str,
        *,
        bad_signature: bool = False,
        query: dict[str, str] | None = None,
        give_up_after: float | None = None,
    ) -> Reply | None:
        """One try; None if the bot did not answer within `give_up_after` (WeChat gives up)."""
        q = query or self._query(bad_signature=bad_signature)
        data = body.encode() if isinstance(body, str) else body
        try:
            async with self.session.post(
                self.url,
                params=q,
                data=data,
                timeout=aiohttp.ClientTimeout(total=give_up_after),
                headers={"Content-Type": "text/xml"},
            ) as resp:
                text = await resp.text()
                return self._reply(resp.status, text, q)
        except TimeoutError:
            return None

    async def post(
        self,
        xml: str,
        *,
        bad_signature: bool = False,
        bad_msg_signature: bool = False,
        give_up_after: float | None = None,
    ) -> Reply | None:
        """One try of a callback, encrypted when the account is in safe mode."""
        q = self._query(bad_signature=bad_signature)
        body = xml
        if self.crypto is not None:
            envelope = xmltodict.parse(
                self.crypto.encrypt_message(xml, q["nonce"], q["timestamp"])
            )["xml"]
            q["encrypt_type"] = "aes"
            q["msg_signature"] = "0" * 40 if bad_msg_signature else envelope["MsgSignature"]
            body = (
                "<xml><ToUserName><![CDATA[gh_bot]]></ToUserName>"
                f"<Encrypt><![CDATA[{envelope['Encrypt']}]]></Encrypt></xml>"
            )
        return await self.post_raw(body, query=q, give_up_after=give_up_after)

    async def deliver(
        self, xml: str, *, give_up_after: float, tries: int = 3
    ) -> list[Reply | None]:
        """WeChat's way: try, and try again (same MsgId) while the bot does not answer in time."""
        results: list[Reply | None] = []
        for _ in range(tries):
            reply = await self.post(xml, give_up_after=give_up_after)
            results.append(reply)
            if reply is not None:
                break
        return results

    def _reply(self, status: int, text: str, q: dict[str, str]) -> Reply:
        if status != 200 or not text.startswith("<xml>"):
            return Reply(status, text, None)
        fields = xmltodict.parse(text)["xml"]
        if self.crypto is not None and q.get("encrypt_type") == "aes":
            assert "Encrypt" in fields, "a safe-mode request must get an encrypted reply"
            inner = self.crypto.decrypt_message(
                text, fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"]
            )
            fields = xmltodict.parse(inner)["xml"]
        return Reply(status, text, fields)

    async def verify(self, echostr: str, *, bad_signature: bool = False) -> tuple[int, str]:
        q = self._query(bad_signature=bad_signature)
        q["echostr"] = echostr
        async with self.session.get(self.url, params=q) as resp:
            return resp.status, await resp.text()


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    """Poll until `predicate()` (sync or async) is true; fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
