"""A small WeChat Pay stand-in on loopback: the order APIs (v2 XML, v3 JSON) and the keys.

It checks what the real service checks on an order (v2: the API-key signature; v3: the
merchant's RSA signature in the Authorization header) and answers with a code_url or a
prepay_id. Tests use `notify_v2` / `notify_v3` to build notifications the way WeChat Pay does.
"""

from __future__ import annotations

import base64
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

from bot.payments import encrypt_v3, from_xml, sign_v2, to_xml

MCHID = "1900000109"
APPID = "wx1234567890abcdef"
API_KEY = "k" * 32
API_V3_KEY = "v3key-0123456789abcdef0123456789"  # 32 bytes
assert len(API_V3_KEY) == 32


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


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

    merchant: rsa.RSAPrivateKey = field(default_factory=rsa_key)
    platform: rsa.RSAPrivateKey = field(default_factory=rsa_key)
    serial: str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"

    @property
    def platform_cert(self) -> bytes:
        return self_signed_cert(self.platform)


class FakeWeChatPay:
    """The order endpoints; `orders` records what the bot asked for."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.orders: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/pay/unifiedorder", self.unifiedorder)
        self.app.router.add_post("/v3/pay/transactions/{kind}", self.transactions)

    async def unifiedorder(self, request: web.Request) -> web.Response:
        data = from_xml(await request.read())
        sign_type = data.get("sign_type", "MD5")
        if data.get("sign") != sign_v2(data, API_KEY, sign_type):
            answer = {"return_code": "FAIL", "return_msg": "签名错误"}
            return web.Response(body=to_xml(answer), content_type="text/xml")
        self.orders.append(data)
        answer = {
            "return_code": "SUCCESS",
            "result_code": "SUCCESS",
            "appid": data["appid"],
            "mch_id": data["mch_id"],
            "nonce_str": secrets.token_hex(8),
            "trade_type": data["trade_type"],
            "prepay_id": "wx" + secrets.token_hex(14),
            "sign_type": sign_type,
        }
        if data["trade_type"] == "NATIVE":
            answer["code_url"] = "weixin://wxpay/bizpayurl?pr=" + secrets.token_hex(4)
        answer["sign"] = sign_v2(answer, API_KEY, sign_type)
        return web.Response(body=to_xml(answer), content_type="text/xml")

    async def transactions(self, request: web.Request) -> web.Response:
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', auth))
        message = (
            f"POST\n{request.path}\n{fields.get('timestamp')}\n{fields.get('nonce_str')}\n{body}\n"
        )
        try:
            self.keys.merchant.public_key().verify(
                base64.b64decode(fields.get("signature", "")),
                message.encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return web.json_response({"code": "SIGN_ERROR", "message": "bad signature"}, status=401)
        if (
            not auth.startswith("WECHATPAY2-SHA256-RSA2048 ")
            or fields.get("serial_no") != self.keys.serial
        ):
            return web.json_response({"code": "SIGN_ERROR", "message": "bad serial"}, status=401)
        data = json.loads(body)
        self.orders.append(data)
        if request.match_info["kind"] == "native":
            return web.json_response(
                {"code_url": "weixin://wxpay/bizpayurl?pr=" + secrets.token_hex(4)}
            )
        return web.json_response({"prepay_id": "wx" + secrets.token_hex(14)})


def notify_v2(
    out_trade_no: str,
    total_fee: int,
    *,
    sign_type: str = "HMAC-SHA256",
    key: str = API_KEY,
    mch_id: str = MCHID,
    appid: str = APPID,
    fee_type: str = "CNY",
) -> bytes:
    """A v2 payment notification as WeChat Pay posts it."""
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
        "sign_type": sign_type,
        "time_end": time.strftime("%Y%m%d%H%M%S"),
        "total_fee": total_fee,
        "trade_type": "NATIVE",
        "transaction_id": "4200" + secrets.token_hex(12),
    }
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
