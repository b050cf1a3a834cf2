"""The callback URL under WeChat's own traffic and under attack: signatures, safe mode,
hostile XML and oversized bodies."""

from __future__ import annotations

import pytest

from fakes.core import FakeCore
from fakes.wechat_api import FakeWeChat
from fakes.wechat_client import event_xml, next_msg_id, sign, text_xml, wait_for
from tests.wechat.conftest import TOKEN, StartBot, new_aes_key

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><ToUserName>gh_bot</ToUserName><FromUserName>o-attacker</FromUserName>
<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&lol9;</Content><MsgId>1</MsgId></xml>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>gh_bot</ToUserName><FromUserName>o-attacker</FromUserName>
<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&xxe;</Content><MsgId>2</MsgId></xml>"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY % remote SYSTEM "http://127.0.0.1:1/evil.dtd"> %remote;]>
<xml><ToUserName>gh_bot</ToUserName><MsgType>text</MsgType><MsgId>3</MsgId></xml>"""


@pytest.mark.parametrize("mode", ["customer_service", "passive"])
async def test_url_verification_echoes_echostr(
    start_bot: StartBot, fake_core: FakeCore, mode: str
) -> None:
    bot = await start_bot(fake_core, mode=mode)
    assert await bot.wechat.verify("echo-123") == (200, "echo-123")
    status, _ = await bot.wechat.verify("echo-123", bad_signature=True)
    assert status == 403


async def test_safe_mode_verification_checks_msg_signature(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive", aes_key=new_aes_key())
    q = {"timestamp": "1700000000", "nonce": "n1", "echostr": "abc"}
    q["signature"] = sign(TOKEN, q["timestamp"], q["nonce"])
    q["msg_signature"] = sign(TOKEN, q["timestamp"], q["nonce"], q["echostr"])
    async with bot.wechat.session.get(bot.wechat.url, params=q) as resp:
        assert (resp.status, await resp.text()) == (200, "abc")
    q["msg_signature"] = "0" * 40
    async with bot.wechat.session.get(bot.wechat.url, params=q) as resp:
        assert resp.status == 403


@pytest.mark.parametrize("aes", [False, True], ids=["plain", "safe"])
async def test_bad_signature_is_refused_and_nothing_is_answered(
    start_bot: StartBot, fake_core: FakeCore, fake_wechat: FakeWeChat, aes: bool
) -> None:
    bot = await start_bot(fake_core, mode="customer_service", aes_key=new_aes_key() if aes else "")
    reply = await bot.wechat.post(text_xml("o-user", "hello", next_msg_id()), bad_signature=True)
    assert reply is not None and reply.status == 403
    if aes:
        reply = await bot.wechat.post(
            text_xml("o-user", "hello", next_msg_id()), bad_msg_signature=True
        )
        assert reply is not None and reply.status == 403
    # A good message afterwards is answered: the bad ones left no trace.
    good = await bot.wechat.post(text_xml("o-user", "after", next_msg_id()))
    assert good is not None and good.body == "success"
    await wait_for(lambda: fake_wechat.texts_to("o-user"))
    assert fake_core.handled == ["after"]
    assert sum(fake_core.charges.values()) == 1


@pytest.mark.parametrize(
    "body",
    [BILLION_LAUGHS, XXE, PARAMETER_ENTITY, "<xml><MsgType>text", "not xml at all", "<a/>"],
    ids=["billion-laughs", "xxe", "parameter-entity", "truncated", "garbage", "wrong-root"],
)
async def test_hostile_xml_gets_400(start_bot: StartBot, fake_core: FakeCore, body: str) -> None:
    bot = await start_bot(fake_core, mode="passive")
    reply = await bot.wechat.post_raw(body)
    assert reply is not None and reply.status == 400
    assert fake_core.handled == []


async def test_hostile_xml_inside_a_safe_mode_envelope_gets_400(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive", aes_key=new_aes_key())
    reply = await bot.wechat.post(XXE)  # correctly encrypted and signed, poisonous inside
    assert reply is not None and reply.status == 400
    assert fake_core.handled == []


async def test_oversized_body_gets_400_before_it_is_read(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="passive")
    big = "<xml><Content>" + "A" * (256 * 1024) + "</Content></xml>"
    reply = await bot.wechat.post_raw(big)
    assert reply is not None and reply.status == 400

    async def endless() -> object:  # chunked, no Content-Length: cut off while reading
        for _ in range(1000):
            yield b"<xml>" + b"B" * 8192

    q = bot.wechat._query()
    async with bot.wechat.session.post(bot.wechat.url, params=q, data=endless()) as resp:
        assert resp.status == 400
    assert fake_core.handled == []


async def test_a_user_may_write_doctype_in_a_message(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    """Only markup is screened: text in CDATA that looks like a DTD is just text."""
    bot = await start_bot(fake_core, mode="passive")
    reply = await bot.wechat.post(text_xml("o-user", "what is <!DOCTYPE html>?", next_msg_id()))
    assert reply is not None and reply.status == 200
    assert reply.content == "echo: what is <!DOCTYPE html>?"


async def test_reply_with_cdata_end_survives(start_bot: StartBot, fake_core: FakeCore) -> None:
    """A reply containing "]]>" (code does) still makes well-formed XML, in both modes."""
    for aes in ("", new_aes_key()):
        bot = await start_bot(fake_core, mode="passive", aes_key=aes)
        reply = await bot.wechat.post(text_xml("o-code", "x = a[b[0]]>1", next_msg_id()))
        assert reply is not None and reply.content == "echo: x = a[b[0]]>1"


async def test_safe_mode_round_trip(start_bot: StartBot, fake_core: FakeCore) -> None:
    """An encrypted question gets an encrypted answer (the client checks and decrypts it)."""
    bot = await start_bot(fake_core, mode="passive", aes_key=new_aes_key())
    reply = await bot.wechat.post(text_xml("o-safe", "你好", next_msg_id()))
    assert reply is not None and reply.status == 200
    assert "Encrypt" in reply.body and "你好" not in reply.body
    assert reply.content == "echo: 你好"
    assert reply.fields is not None and reply.fields["ToUserName"] == "o-safe"


async def test_compatible_mode_accepts_plain_and_encrypted(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    """With an AES key set, plain callbacks (compatible mode) still work, in plain."""
    bot = await start_bot(fake_core, mode="passive", aes_key=new_aes_key())
    crypto, bot.wechat.crypto = bot.wechat.crypto, None
    reply = await bot.wechat.post(text_xml("o-compat", "plain", next_msg_id()))
    assert reply is not None and reply.content == "echo: plain"
    bot.wechat.crypto = crypto
    reply = await bot.wechat.post(text_xml("o-compat", "sealed", next_msg_id()))
    assert reply is not None and reply.content == "echo: sealed"


async def test_subscribe_welcomes_and_grants_the_trial_once(
    start_bot: StartBot, fake_core: FakeCore
) -> None:
    bot = await start_bot(fake_core, mode="customer_service", wechat_trial_credits=50)
    reply = await bot.wechat.post(event_xml("o-new", "subscribe", 1700000000))
    assert reply is not None and reply.content is not None
    assert "欢迎" in reply.content and "Welcome" in reply.content and "50" in reply.content
    assert fake_core.trials == {"o-new"}
    # Unsubscribe and subscribe again: welcomed, but no second trial.
    await bot.wechat.post(event_xml("o-new", "unsubscribe", 1700000100))
    again = await bot.wechat.post(event_xml("o-new", "subscribe", 1700000200))
    assert again is not None and again.content is not None
    assert "Welcome" in again.content and "trial" not in again.content


def test_not_installed_without_a_token(fake_core: FakeCore) -> None:
    from aiohttp import web

    from adapters.wechat import install
    from bot.settings import Settings

    app = web.Application()
    assert install(fake_core, Settings(_env_file=None, wechat_token=""), app) is None
    assert len(app.router.routes()) == 0
