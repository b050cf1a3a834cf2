"""A small WeChat Pay stand-in on loopback: create, query and close orders (v2 XML, v3 JSON).

It checks what the real service checks on a call (v2: the API-key signature; v3: the
merchant's RSA signature in the Authorization header) and signs its answers as WeChat Pay does
(v2: `sign` with the API key; v3: Wechatpay-* headers with the platform key), or misbehaves on
request. Tests use `notify_v2` / `notify_v3` to build notifications the way WeChat Pay does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from bot.providers.wechatpay import encrypt_v3, from_xml, sign_v2, to_xml

MCHID = "1900000109"
APPID = "wx1234567890abcdef"
API_KEY = "k" * 32
API_V3_KEY = "v3key-0123456789abcdef0123456789"  # 32 bytes
assert len(API_V3_KEY) == 32


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def role_key(role: str) -> rsa.RSAPrivateKey:
    """One key per role ("merchant", "platform", "stranger") for the whole run: making 2048-bit
    keys was most of each WeChat Pay test's setup. `rsa_key()` still makes a fresh one."""
    return rsa_key()


def pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed_cert(key: rsa.RSAPrivateKey, name: str = "Tenpay.com Root CA") -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def rsa_sign(key: rsa.RSAPrivateKey, message: str) -> str:
    return base64.b64encode(
        key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    ).decode()


@dataclass
class Keys:
    """The merchant's API key pair and the platform's certificate key pair (both test-made)."""

    merchant: rsa.RSAPrivateKey = field(default_factory=lambda: role_key("merchant"))
    platform: rsa.RSAPrivateKey = field(default_factory=lambda: role_key("platform"))
    serial: str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"

    @property
    def platform_cert(self) -> bytes:
        return self_signed_cert(self.platform)


@dataclass
class Trade:
    """One order as the stand-in WeChat Pay holds it."""

    out_trade_no: str
    fen: int
    trade_type: str
    state: str = "NOTPAY"  # NOTPAY -> SUCCESS (pay) or CLOSED (close)
    transaction_id: str = ""


FAULTS = {
    *("ok", "500", "429", "timeout", "badsig", "unsigned", "stale"),
    *("amount", "mchid", "appid", "paid-after", "notfound", "foreign"),
    *("replayed", "garbled"),
}


class FakeWeChatPay:
    """The order, query and close endpoints of both API versions, answering signed.

    `orders` records what the bot asked to create, `trades` what each order has become, and
    `calls` every (what, out_trade_no) it was asked: "order", "query", "close". `pay(no)` plays
    the user paying. `misbehave(on, *faults)` makes the next calls to "order", "query" or
    "close" misbehave, one fault per call: "ok" (none, to aim at a later call), "500",
    "429", "timeout" (answers after `delay` seconds), "badsig" (signed with a key that is not
    ours), "unsigned", "stale" (v3: a timestamp 10 minutes old), "garbled" (v2: a non-ASCII
    sign; v3: a Unicode-digit timestamp, "²", that str.isdigit takes), or, on a query, a SUCCESS
    answer with a wrong "amount", "mchid" or "appid", "paid-after" (the answer says NOTPAY and
    the user pays right after), "notfound" (a genuine "no such order" answer, as one replayed
    from another query would be: it names no order), or "foreign" (the order's true state,
    with another merchant's mchid and app id); on a close, "replayed": a genuine-looking
    confirmation (v3: a signed empty 204; v2: SUCCESS, no order number), as a replay of
    another close's answer would be, while the order stays as it is.
    """

    def __init__(self, keys: Keys, *, delay: float = 2.0) -> None:
        self.keys = keys
        self.delay = delay
        self.orders: list[dict[str, Any]] = []
        self.trades: dict[str, Trade] = {}
        self.calls: list[tuple[str, str]] = []
        self.faults: dict[str, list[str]] = {"order": [], "query": [], "close": []}
        self._stranger = role_key("stranger")
        self._closing = asyncio.Event()
        self.app = web.Application()
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.router.add_post("/pay/unifiedorder", self.unifiedorder)
        self.app.router.add_post("/pay/orderquery", self.orderquery)
        self.app.router.add_post("/pay/closeorder", self.closeorder)
        self.app.router.add_get("/v3/pay/transactions/out-trade-no/{no}", self.query_v3)
        self.app.router.add_post("/v3/pay/transactions/out-trade-no/{no}/close", self.close_v3)
        self.app.router.add_post("/v3/pay/transactions/{kind}", self.transactions)

    # -- the test's hands --

    def pay(self, out_trade_no: str) -> Trade:
        """The user pays the order (WeChat Pay's side only: no notification is sent)."""
        trade = self.trades[out_trade_no]
        trade.state = "SUCCESS"
        trade.transaction_id = "4200" + secrets.token_hex(12)
        return trade

    def misbehave(self, on: str, *faults: str) -> None:
        assert on in self.faults and set(faults) <= FAULTS, (on, faults)
        self.faults[on].extend(faults)

    def asked(self, what: str) -> list[str]:
        """The orders asked about with `what` ("order", "query", "close"), in order."""
        return [no for w, no in self.calls if w == what]

    async def _fault(self, on: str) -> str | None:
        fault = self.faults[on].pop(0) if self.faults[on] else None
        if fault == "timeout":  # late, but never later than the server's shutdown
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay)
        return None if fault == "ok" else fault

    async def _on_shutdown(self, app: web.Application) -> None:
        """A stopping server waits for its handlers: a "timeout" answer gives up at once."""
        self._closing.set()

    # -- v2 --

    def _v2_answer(self, answer: dict[str, Any], sign_type: str, fault: str | None) -> web.Response:
        if fault in ("500", "429"):
            return web.Response(status=int(fault), text="busy")
        answer = {**answer, "nonce_str": secrets.token_hex(8)}
        if fault != "unsigned":
            key = "x" * 32 if fault == "badsig" else API_KEY
            answer["sign"] = sign_v2(answer, key, sign_type)
        if fault == "garbled":
            answer["sign"] = "签名" + answer["sign"][2:]
        return web.Response(body=to_xml(answer), content_type="text/xml")

    async def _v2_request(self, request: web.Request) -> dict[str, str] | None:
        data = from_xml(await request.read())
        if data.get("sign") != sign_v2(data, API_KEY, data.get("sign_type", "MD5")):
            return None
        return data

    @staticmethod
    def _v2_refused() -> web.Response:
        answer = {"return_code": "FAIL", "return_msg": "签名错误"}
        return web.Response(body=to_xml(answer), content_type="text/xml")

    async def unifiedorder(self, request: web.Request) -> web.Response:
        data = await self._v2_request(request)
        if data is None:
            return self._v2_refused()
        sign_type = data.get("sign_type", "MD5")
        self.orders.append(data)
        otn = data["out_trade_no"]
        self.calls.append(("order", otn))
        self.trades[otn] = Trade(otn, int(data["total_fee"]), data["trade_type"])
        answer = {
            "return_code": "SUCCESS",
            "result_code": "SUCCESS",
            "appid": data["appid"],
            "mch_id": data["mch_id"],
            "trade_type": data["trade_type"],
            "prepay_id": "wx" + secrets.token_hex(14),
            "sign_type": sign_type,
        }
        if data["trade_type"] == "NATIVE":
            answer["code_url"] = "weixin://wxpay/bizpayurl?pr=" + secrets.token_hex(4)
        return self._v2_answer(answer, sign_type, await self._fault("order"))

    async def orderquery(self, request: web.Request) -> web.Response:
        data = await self._v2_request(request)
        if data is None:
            return self._v2_refused()
        otn = data.get("out_trade_no", "")
        self.calls.append(("query", otn))
        fault = await self._fault("query")
        answer: dict[str, Any] = {
            "return_code": "SUCCESS",
            "appid": APPID,
            "mch_id": MCHID,
        }
        trade = self.trades.get(otn)
        if trade is None or fault == "notfound":
            answer.update(result_code="FAIL", err_code="ORDERNOTEXIST", err_code_des="订单不存在")
            return self._v2_answer(answer, data.get("sign_type", "MD5"), fault)
        if fault == "foreign":
            answer.update(appid="wx0000000000000000", mch_id="1900000999")
        answer.update(
            result_code="SUCCESS",
            out_trade_no=otn,
            trade_type=trade.trade_type,
            trade_state=trade.state,
            trade_state_desc=trade.state,
        )
        if trade.state == "SUCCESS" or fault in ("amount", "mchid", "appid"):
            answer.update(
                trade_state="SUCCESS",
                total_fee=trade.fen * (100 if fault == "amount" else 1),
                cash_fee=trade.fen,
                fee_type="CNY",
                transaction_id=trade.transaction_id or "4200" + secrets.token_hex(12),
                time_end=time.strftime("%Y%m%d%H%M%S"),
            )
            if fault == "mchid":
                answer["mch_id"] = "1900000999"
            if fault == "appid":
                answer["appid"] = "wx0000000000000000"
        if fault == "paid-after":
            self.pay(otn)  # after the answer was made: it still says NOTPAY
        return self._v2_answer(answer, data.get("sign_type", "MD5"), fault)

    async def closeorder(self, request: web.Request) -> web.Response:
        data = await self._v2_request(request)
        if data is None:
            return self._v2_refused()
        otn = data.get("out_trade_no", "")
        self.calls.append(("close", otn))
        fault = await self._fault("close")
        answer: dict[str, Any] = {"return_code": "SUCCESS", "appid": APPID, "mch_id": MCHID}
        trade = self.trades.get(otn)
        if trade is None:
            answer.update(result_code="FAIL", err_code="ORDERNOTEXIST")
        elif trade.state == "SUCCESS":
            answer.update(result_code="FAIL", err_code="ORDERPAID", err_code_des="订单已支付")
        else:
            if fault is None:
                trade.state = "CLOSED"
            answer["result_code"] = "SUCCESS"
        if fault == "replayed":  # another order's confirmation: this one is left as it is
            answer = {"return_code": "SUCCESS", "result_code": "SUCCESS"}
            answer |= {"appid": APPID, "mch_id": MCHID}
        return self._v2_answer(answer, data.get("sign_type", "MD5"), fault)

    # -- v3 --

    def _v3_answer(
        self, status: int, data: dict[str, Any] | None, fault: str | None = None
    ) -> web.Response:
        """An answer signed as WeChat Pay signs them (or not, as `fault` says)."""
        if fault in ("500", "429"):
            return web.json_response({"code": "SYSTEM_ERROR", "message": "busy"}, status=int(fault))
        body = "" if data is None else json.dumps(data, ensure_ascii=False)
        ts = int(time.time()) - (600 if fault == "stale" else 0)
        nonce = secrets.token_hex(16)
        signer = self._stranger if fault == "badsig" else self.keys.platform
        headers = {}
        if fault != "unsigned":
            headers = {
                "Wechatpay-Timestamp": "\u00b2" if fault == "garbled" else str(ts),
                "Wechatpay-Nonce": nonce,
                "Wechatpay-Signature": rsa_sign(signer, f"{ts}\n{nonce}\n{body}\n"),
                "Wechatpay-Serial": self.keys.serial,
            }
        if data is None:
            return web.Response(status=status, headers=headers)
        return web.Response(
            status=status, body=body.encode(), content_type="application/json", headers=headers
        )

    async def _v3_request(self, request: web.Request) -> tuple[str, web.Response | None]:
        """The request's body, and an error answer if the merchant's signature is wrong."""
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', auth))
        message = (
            f"{request.method}\n{request.path_qs}\n{fields.get('timestamp')}\n"
            f"{fields.get('nonce_str')}\n{body}\n"
        )
        try:
            self.keys.merchant.public_key().verify(
                base64.b64decode(fields.get("signature", "")),
                message.encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return body, web.json_response(
                {"code": "SIGN_ERROR", "message": "bad signature"}, status=401
            )
        if (
            not auth.startswith("WECHATPAY2-SHA256-RSA2048 ")
            or fields.get("serial_no") != self.keys.serial
        ):
            return body, web.json_response(
                {"code": "SIGN_ERROR", "message": "bad serial"}, status=401
            )
        return body, None

    async def transactions(self, request: web.Request) -> web.Response:
        body, refused = await self._v3_request(request)
        if refused is not None:
            return refused
        data = json.loads(body)
        self.orders.append(data)
        otn = data["out_trade_no"]
        kind = request.match_info["kind"]
        self.calls.append(("order", otn))
        self.trades[otn] = Trade(otn, int(data["amount"]["total"]), kind.upper())
        fault = await self._fault("order")
        if kind == "native":
            answer = {"code_url": "weixin://wxpay/bizpayurl?pr=" + secrets.token_hex(4)}
        else:
            answer = {"prepay_id": "wx" + secrets.token_hex(14)}
        return self._v3_answer(200, answer, fault)

    async def query_v3(self, request: web.Request) -> web.Response:
        _, refused = await self._v3_request(request)
        if refused is not None:
            return refused
        otn = request.match_info["no"]
        self.calls.append(("query", otn))
        fault = await self._fault("query")
        if request.query.get("mchid") != MCHID:
            return self._v3_answer(400, {"code": "PARAM_ERROR", "message": "mchid"}, fault)
        trade = self.trades.get(otn)
        if trade is None or fault == "notfound":
            return self._v3_answer(404, {"code": "ORDER_NOT_EXIST", "message": "无"}, fault)
        foreign = fault == "foreign"
        answer: dict[str, Any] = {
            "appid": "wx0000000000000000" if foreign else APPID,
            "mchid": "1900000999" if foreign else MCHID,
            "out_trade_no": otn,
            "trade_type": trade.trade_type,
            "trade_state": trade.state,
            "trade_state_desc": trade.state,
            "amount": {"payer_currency": "CNY"},
        }
        if trade.state == "SUCCESS" or fault in ("amount", "mchid", "appid"):
            total = trade.fen * (100 if fault == "amount" else 1)
            answer.update(
                trade_state="SUCCESS",
                transaction_id=trade.transaction_id or "4200" + secrets.token_hex(12),
                success_time=datetime.now(UTC).isoformat(timespec="seconds"),
                amount={
                    "total": total,
                    "payer_total": total,
                    "currency": "CNY",
                    "payer_currency": "CNY",
                },
            )
            if fault == "mchid":
                answer["mchid"] = "1900000999"
            if fault == "appid":
                answer["appid"] = "wx0000000000000000"
        if fault == "paid-after":
            self.pay(otn)  # after the answer was made: it still says NOTPAY
        return self._v3_answer(200, answer, fault)

    async def close_v3(self, request: web.Request) -> web.Response:
        body, refused = await self._v3_request(request)
        if refused is not None:
            return refused
        otn = request.match_info["no"]
        self.calls.append(("close", otn))
        fault = await self._fault("close")
        if fault == "replayed":  # another order's confirmation: this one is left as it is
            return self._v3_answer(204, None)
        if json.loads(body or "{}").get("mchid") != MCHID:
            return self._v3_answer(400, {"code": "PARAM_ERROR", "message": "mchid"}, fault)
        trade = self.trades.get(otn)
        if trade is None:
            return self._v3_answer(404, {"code": "ORDER_NOT_EXIST", "message": "无"}, fault)
        if trade.state == "SUCCESS":
            return self._v3_answer(400, {"code": "ORDERPAID", "message": "已支付"}, fault)
        if fault is None:
            trade.state = "CLOSED"
        return self._v3_answer(204, None, fault)


def notify_v2(
    out_trade_no: str,
    total_fee: int,
    *,
    sign_type: str = "HMAC-SHA256",
    key: str = API_KEY,
    mch_id: str = MCHID,
    appid: str = APPID,
    fee_type: str = "CNY",
    named_type: str | None = "",
) -> bytes:
    """A v2 payment notification as WeChat Pay posts it, signed with `sign_type`.

    Its sign_type field says `sign_type` unless `named_type` says otherwise (None: no field).
    """
    data: dict[str, Any] = {
        "appid": appid,
        "bank_type": "OTHERS",
        "cash_fee": total_fee,
        "fee_type": fee_type,
        "is_subscribe": "N",
        "mch_id": mch_id,
        "nonce_str": secrets.token_hex(16),
        "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "out_trade_no": out_trade_no,
        "result_code": "SUCCESS",
        "return_code": "SUCCESS",
        "sign_type": named_type if named_type != "" else sign_type,
        "time_end": time.strftime("%Y%m%d%H%M%S"),
        "total_fee": total_fee,
        "trade_type": "NATIVE",
        "transaction_id": "4200" + secrets.token_hex(12),
    }
    if data["sign_type"] is None:
        del data["sign_type"]
    data["sign"] = sign_v2(data, key, sign_type)
    return to_xml(data)


def notify_v3(
    keys: Keys,
    out_trade_no: str,
    total: int,
    *,
    signer: rsa.RSAPrivateKey | None = None,
    mchid: str = MCHID,
    appid: str = APPID,
    currency: str = "CNY",
    api_v3_key: str = API_V3_KEY,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """A v3 notification: headers and body, signed with the platform key (or `signer`)."""
    transaction = {
        "mchid": mchid,
        "appid": appid,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200" + secrets.token_hex(12),
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "success_time": datetime.now(UTC).isoformat(timespec="seconds"),
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {
            "total": total,
            "payer_total": total,
            "currency": currency,
            "payer_currency": currency,
        },
    }
    envelope = {
        "id": secrets.token_hex(16),
        "create_time": datetime.now(UTC).isoformat(timespec="seconds"),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": encrypt_v3(api_v3_key, transaction),
    }
    body = json.dumps(envelope, ensure_ascii=False).encode()
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = secrets.token_hex(16)
    message = f"{ts}\n{nonce}\n{body.decode()}\n"
    headers = {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": rsa_sign(signer or keys.platform, message),
        "Wechatpay-Serial": keys.serial,
        "Content-Type": "application/json",
    }
    return headers, body
