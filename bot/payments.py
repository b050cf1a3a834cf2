"""WeChat Pay top-ups: orders, the pay API (v2 XML and v3 JSON), and payment notifications.

1 CNY = 10,000 credits, so 1 fen = 100 credits = 100,000 millicredits.

The order's "paid" state and the credit are one step: the wallet credit with the idempotency
key `wxpay:<out_trade_no>` *is* the payment's record. WeChat Pay repeats a notification until it
is acknowledged, so a crash after the credit and before the answer only leads to a replay, and a
replay finds the same key and credits nothing more. The store's order record is the
operator's view; its `wxpay:paid:<out_trade_no>` marker is written after the credit.

A notification credits only if its signature verifies (v2: MD5 or HMAC-SHA256 with the API
key; v3: RSA-SHA256 with the platform certificate, then AES-256-GCM with the APIv3 key), it
says SUCCESS, its mchid and appid are ours, the order exists, and the amount in fen and the
currency (CNY) match the order. Anything else credits nothing and is answered FAIL.

Unpaid orders expire after `order_ttl` seconds: the order carries `time_expire`, so WeChat Pay
itself refuses a late payment. A payment that WeChat Pay confirms for an order we have already
marked expired was accepted before the deadline and is credited.

A notification can be lost (the bot down past WeChat Pay's retries, the network, a wrong notify
URL), so `reconcile` asks WeChat Pay about open orders itself: once an order is a minute old,
then as it ages, and always before it is marked expired. A SUCCESS answer goes through the same
checks and the same idempotent credit as a notification; an unpaid order is closed at WeChat Pay
before it is marked expired, so it cannot be paid afterwards. An answer that fails (network,
5xx, 429) or does not verify changes nothing: the next pass asks again.

An order is marked expired only on a verified answer that names it: a query saying CLOSED (or
REVOKED) with our out_trade_no, mchid and appid in the signed body. The close's own answer names
no order (v3: an empty signed 204 whose signature covers only timestamp and nonce; v2: no
out_trade_no and no timestamp, so a captured one replays forever), and neither does "order not
found" (v3: a 404 without the number; v2: ORDERNOTEXIST), so neither expires an order by
itself: after a close the order is queried again, and an order WeChat Pay says it does not know
stays open until it has said so on every answer for NOT_FOUND_GRACE past the deadline (an order
WeChat Pay never knew cannot have been paid, and it refuses payment after time_expire anyway).

Every API answer we act on is verified: v3 by the platform key's RSA-SHA256 signature over
"timestamp\nnonce\nbody\n" (timestamps more than 5 minutes off refused), v2 by its `sign` with
the API key and the configured sign type, after return_code SUCCESS. Notifications are pinned to
the configured sign type too. A malformed signature or timestamp (not ASCII, too long) is a
plain rejection, never an exception.

No wechatpy here (the bot wing stays platform-free): signing is hashlib/hmac and cryptography.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import io
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element, SubElement, tostring

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from defusedxml.ElementTree import fromstring as parse_xml

from billing.money import fen_to_milli, format_credits, format_fen
from bot.store.base import Store

log = logging.getLogger(__name__)

V3_MAX_SKEW_SECONDS = 300
# A Wechatpay-Timestamp: ASCII digits only (str.isdigit takes "²", which int() refuses), and
# short enough for int() (which refuses more than 4,300 digits).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# Credit callback: Core.credit_payment(platform, user_id, amount_milli, *, key, reason, meta).
CreditFn = Callable[..., Awaitable[Any]]


class PaymentError(Exception):
    """A WeChat Pay API call failed: refused, unreachable, busy, or an answer that does not verify.

    The message is safe to log and show an operator (no keys, no signatures).
    """


class NotifyRejected(Exception):
    """A notification that must credit nothing; `reason` is safe to log (no secrets)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class PayConfig:
    """What the merchant account needs; `from_settings` reads the operator's settings."""

    mchid: str
    appid: str
    api_key: str = ""  # v2 signing key
    api_v3_key: str = ""  # v3 AES-256-GCM key (32 bytes)
    sign_type: str = "HMAC-SHA256"  # v2: "HMAC-SHA256" or "MD5"
    notify_url: str = ""
    api_base: str = "https://api.mch.weixin.qq.com"
    platform_cert_pem: bytes | None = None  # v3: certificate or public key of the platform
    private_key_pem: bytes | None = None  # v3: the merchant's API private key
    cert_serial: str = ""  # v3: serial number of the merchant's API certificate
    order_ttl: int = 1800

    @property
    def v3(self) -> bool:
        """Orders go through API v3 when its keys are configured, else through v2."""
        return bool(self.api_v3_key and self.private_key_pem and self.cert_serial)

    @property
    def configured(self) -> bool:
        return bool(self.mchid and self.appid and (self.api_key or self.api_v3_key))

    @classmethod
    def from_settings(cls, settings: Any) -> PayConfig:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(
            mchid=settings.wechatpay_mchid,
            appid=settings.wechat_appid,
            api_key=settings.wechatpay_api_key,
            api_v3_key=settings.wechatpay_api_v3_key,
            sign_type=settings.wechatpay_sign_type,
            notify_url=settings.wechatpay_notify_url,
            api_base=settings.wechatpay_api_base,
            platform_cert_pem=read(settings.wechatpay_platform_cert),
            private_key_pem=read(getattr(settings, "wechatpay_private_key", None)),
            cert_serial=getattr(settings, "wechatpay_cert_serial", ""),
            order_ttl=settings.wechatpay_order_ttl_seconds,
        )


@dataclass(slots=True)
class Order:
    """One top-up order, as kept in the store."""

    out_trade_no: str
    platform: str
    user_id: str
    fen: int
    trade_type: str  # "NATIVE" or "JSAPI"
    created_at: str
    expires_at: str
    status: str = "unpaid"  # "unpaid", "paid", "expired"
    code_url: str | None = None
    prepay_id: str | None = None
    openid: str | None = None
    transaction_id: str | None = None
    paid_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def amount_milli(self) -> int:
        return fen_to_milli(self.fen)

    @property
    def key(self) -> str:
        """The wallet idempotency key of this order's credit."""
        return f"wxpay:{self.out_trade_no}"


@dataclass(frozen=True, slots=True)
class NotifyAnswer:
    """What to send back to WeChat Pay."""

    status: int
    body: bytes
    content_type: str
    credited: bool = False


@dataclass(frozen=True, slots=True)
class TradeState:
    """WeChat Pay's verified answer to an order query.

    `state` is WeChat Pay's trade_state (SUCCESS, NOTPAY, CLOSED, REVOKED, USERPAYING,
    PAYERROR, REFUND) or NOT_FOUND when WeChat Pay has no such order; the other fields are as
    WeChat Pay reported them, for `_settle` and `reconcile` to check against our order. A
    NOT_FOUND answer names no order (WeChat Pay's 404 / ORDERNOTEXIST carries no number), so
    its out_trade_no is empty: it is not evidence about any particular order.
    """

    out_trade_no: str
    state: str
    fen: Any = ""
    currency: str = ""
    mchid: str = ""
    appid: str = ""
    transaction_id: str = ""
    description: str = ""


def trade_from_v3(data: Mapping[str, Any]) -> TradeState:
    """A v3 transaction (a query's answer, or a notification's decrypted resource)."""
    amount = data.get("amount")
    amount = amount if isinstance(amount, dict) else {}
    return TradeState(
        out_trade_no=str(data.get("out_trade_no", "")),
        state=str(data.get("trade_state", "")),
        fen=amount.get("total", ""),
        currency=str(amount.get("currency", "")),
        mchid=str(data.get("mchid", "")),
        appid=str(data.get("appid", "")),
        transaction_id=str(data.get("transaction_id", "")),
        description=str(data.get("trade_state_desc", "")),
    )


def trade_from_v2(data: Mapping[str, str]) -> TradeState:
    """A v2 transaction (an orderquery answer, or a notification), fields as v2 names them."""
    return TradeState(
        out_trade_no=data.get("out_trade_no", ""),
        state=data.get("trade_state", ""),
        fen=data.get("total_fee", ""),
        currency=data.get("fee_type") or "CNY",
        mchid=data.get("mch_id", ""),
        appid=data.get("appid", ""),
        transaction_id=data.get("transaction_id", ""),
        description=data.get("trade_state_desc", ""),
    )


@dataclass(slots=True)
class Sweep:
    """What one `reconcile` pass did (counts, for the log)."""

    credited: int = 0
    expired: int = 0
    failed: int = 0  # queries or closes that failed, or answers that did not match: ask again


# A pending order is first asked about at QUERY_AFTER seconds old, then again after a quarter
# of its age has passed (at least QUERY_GAP_MIN, at most QUERY_GAP_MAX), and always at expiry.
# An order still open past its deadline (a close not yet confirmed, USERPAYING, REFUND, not
# found) is asked again after a quarter of its time past the deadline, at most PAST_GAP_MAX.
QUERY_AFTER = 60
QUERY_GAP_MIN = 60
QUERY_GAP_MAX = 180
PAST_GAP_MAX = 3600
# WeChat Pay must have said "not found" on every answer for this long past the deadline before
# an order is marked expired on that ground (see the module docstring).
NOT_FOUND_GRACE = 24 * 3600
# A stuck order is named in the log at most once per WARN_EVERY per kind of warning.
WARN_EVERY = 3600
PAYABLE = ("NOTPAY", "PAYERROR")  # states in which WeChat Pay would still take the payment


# --- v2 signing and XML ------------------------------------------------------------------


def sign_v2(params: Mapping[str, Any], key: str, sign_type: str = "MD5") -> str:
    """WeChat Pay v2 signature: sorted non-empty k=v pairs, "&key=KEY", MD5 or HMAC-SHA256."""
    text = "&".join(
        f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] not in ("", None)
    )
    text += f"&key={key}"
    if sign_type.upper() == "HMAC-SHA256":
        return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    if sign_type.upper() == "MD5":
        return hashlib.md5(text.encode()).hexdigest().upper()
    raise NotifyRejected(f"unknown sign_type {sign_type!r}")


def same_sign(expected: str, given: str) -> bool:
    """Constant-time check of a signature we computed against one we were given.

    compare_digest raises TypeError on a non-ASCII str, so a non-ASCII `given` (anyone can send
    one) is simply a mismatch, and the comparison is made on bytes.
    """
    return given.isascii() and hmac.compare_digest(expected.encode(), given.encode())


def fresh_timestamp(ts: str, now: float | None = None) -> bool:
    """A v3 Wechatpay-Timestamp: ASCII digits, within V3_MAX_SKEW_SECONDS of now."""
    if not _TIMESTAMP.fullmatch(ts):
        return False
    return abs((time.time() if now is None else now) - int(ts)) <= V3_MAX_SKEW_SECONDS


def to_xml(params: Mapping[str, Any]) -> bytes:
    root = Element("xml")
    for k, v in params.items():
        SubElement(root, k).text = str(v)
    return tostring(root, encoding="utf-8")


def from_xml(body: bytes) -> dict[str, str]:
    """Flat XML to a dict; defusedxml refuses entity tricks."""
    try:
        root = parse_xml(body)
    except Exception as exc:
        raise NotifyRejected("malformed XML") from exc
    return {child.tag: (child.text or "") for child in root}


def v2_answer(ok: bool, msg: str = "OK") -> bytes:
    code = "SUCCESS" if ok else "FAIL"
    return (
        f"<xml><return_code><![CDATA[{code}]]></return_code>"
        f"<return_msg><![CDATA[{msg}]]></return_msg></xml>"
    ).encode()


# --- v3 signing and decryption ----------------------------------------------------------


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """The platform's key from its certificate, or from a bare public key (the newer mode)."""
    if b"CERTIFICATE" in pem:
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the WeChat Pay platform key must be RSA")
    return key


def sign_v3(private_key_pem: bytes, message: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    sig = key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(sig).decode()


def verify_v3(public_key: rsa.RSAPublicKey, message: str, signature_b64: str) -> bool:
    try:
        public_key.verify(
            base64.b64decode(signature_b64), message.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def decrypt_v3(api_v3_key: str, resource: Mapping[str, Any]) -> dict[str, Any]:
    """AEAD_AES_256_GCM resource of a v3 notification to its JSON."""
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise NotifyRejected("unknown resource algorithm")
    try:
        plain = AESGCM(api_v3_key.encode()).decrypt(
            str(resource["nonce"]).encode(),
            base64.b64decode(resource["ciphertext"]),
            str(resource.get("associated_data") or "").encode() or None,
        )
        return json.loads(plain)
    except (InvalidTag, KeyError, ValueError) as exc:
        raise NotifyRejected("resource does not decrypt") from exc


def encrypt_v3(api_v3_key: str, data: Mapping[str, Any], associated: str = "transaction") -> dict:
    """The inverse of decrypt_v3 (for fake servers and tests)."""
    nonce = secrets.token_hex(6)
    ct = AESGCM(api_v3_key.encode()).encrypt(
        nonce.encode(), json.dumps(data).encode(), associated.encode()
    )
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(ct).decode(),
        "associated_data": associated,
        "nonce": nonce,
        "original_type": "transaction",
    }


# --- the service -------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _not_found_key(out_trade_no: str) -> str:
    """When WeChat Pay first said, in an unbroken run of answers, that it has no such order."""
    return f"wxpay:notfound:{out_trade_no}"


def _cn_time(dt: datetime) -> datetime:
    """WeChat Pay reads times in China Standard Time."""
    from datetime import timezone

    return dt.astimezone(timezone(timedelta(hours=8)))


def qr_png(text: str) -> bytes:
    """A PNG of the QR code the user scans to pay (pure Python: qrcode + pypng)."""
    import qrcode
    from qrcode.image.pure import PyPNGImage

    img = qrcode.make(text, image_factory=PyPNGImage, box_size=8, border=2)
    out = io.BytesIO()
    img.save(out)
    return out.getvalue()


_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>充值 Top up</title></head>
<body style="font-family:sans-serif;text-align:center;padding:2em">
<h2>¥{cny}</h2><p>{credits} 积分 / credits</p>
<p id="state">{state}</p>
{button}
<script>
var params = {params};
function pay() {{
  if (!params || typeof WeixinJSBridge === "undefined") {{
    document.getElementById("state").textContent =
      "请在微信中打开此页面 / Please open this page in WeChat";
    return;
  }}
  WeixinJSBridge.invoke("getBrandWCPayRequest", params, function (res) {{
    document.getElementById("state").textContent =
      res.err_msg === "get_brand_wcpay_request:ok"
        ? "支付成功，积分即将到账 / Paid: your credits are on their way"
        : "未完成支付 / Payment not completed";
  }});
}}
if (params) {{
  if (typeof WeixinJSBridge === "undefined") {{
    document.addEventListener("WeixinJSBridgeReady", pay, false);
  }} else {{ pay(); }}
}}
</script></body></html>
"""


class WeChatPay:
    """Orders and notifications for one merchant account.

    `credit` is the core's `credit_payment(platform, user_id, amount_milli, *, key, reason,
    meta)`, so the core resolves the user's account; `store` keeps the orders.
    """

    def __init__(
        self,
        config: PayConfig,
        store: Store,
        credit: CreditFn,
        *,
        http: httpx.AsyncClient | None = None,
        on_paid: Callable[[Order], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.credit = credit
        self.on_paid = on_paid
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self._own_http = http is None
        self._platform_key = (
            load_public_key(config.platform_cert_pem) if config.platform_cert_pem else None
        )
        # Both only for open orders: `reconcile` drops the others at the start of each pass.
        self._asked: dict[str, datetime] = {}  # order -> when reconcile last asked about it
        self._warned: dict[tuple[str, str], datetime] = {}  # (order, warning) -> when logged

    async def close(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # -- orders --

    async def get_order(self, out_trade_no: str) -> Order | None:
        raw = await self.store.get(f"wxpay:order:{out_trade_no}")
        if raw is None:
            return None
        order = Order(**json.loads(raw))
        paid = await self.store.get(f"wxpay:paid:{out_trade_no}")
        if paid:
            info = json.loads(paid)
            order.status = "paid"
            order.transaction_id = info.get("transaction_id")
            order.paid_at = info.get("paid_at")
        return order

    async def _save(self, order: Order) -> None:
        await self.store.set(f"wxpay:order:{order.out_trade_no}", json.dumps(asdict(order)))

    async def create_order(
        self,
        platform: str,
        user_id: str,
        fen: int,
        *,
        trade_type: str = "NATIVE",
        openid: str | None = None,
        description: str = "creditbot credits",
        client_ip: str = "127.0.0.1",
        chat_id: str | None = None,
    ) -> Order:
        """Ask WeChat Pay for a NATIVE (QR code) or JSAPI (in-WeChat) order of `fen` fen."""
        if not isinstance(fen, int) or fen <= 0:
            raise ValueError("the amount is a positive number of fen")
        if trade_type not in ("NATIVE", "JSAPI"):
            raise ValueError("trade_type is NATIVE or JSAPI")
        if trade_type == "JSAPI" and not openid:
            raise ValueError("JSAPI orders need the payer's openid")
        now = _now()
        expires = now + timedelta(seconds=self.config.order_ttl)
        otn = now.strftime("cb%Y%m%d%H%M%S") + secrets.token_hex(6)
        order = Order(
            out_trade_no=otn,
            platform=platform,
            user_id=str(user_id),
            fen=fen,
            trade_type=trade_type,
            created_at=now.isoformat(),
            expires_at=expires.isoformat(),
            openid=openid,
            extra={"chat_id": chat_id} if chat_id else {},
        )
        if self.config.v3:
            await self._create_v3(order, description, expires)
        else:
            await self._create_v2(order, description, expires, client_ip)
        await self._save(order)
        await self.store.sadd("wxpay:open", otn)
        log.info("wechatpay order created", extra={"order": otn, "fen": fen, "type": trade_type})
        return order

    async def _create_v2(
        self, order: Order, description: str, expires: datetime, client_ip: str
    ) -> None:
        cfg = self.config
        params: dict[str, Any] = {
            "appid": cfg.appid,
            "mch_id": cfg.mchid,
            "nonce_str": secrets.token_hex(16),
            "sign_type": cfg.sign_type,
            "body": description,
            "out_trade_no": order.out_trade_no,
            "total_fee": order.fen,
            "fee_type": "CNY",
            "spbill_create_ip": client_ip,
            "time_expire": _cn_time(expires).strftime("%Y%m%d%H%M%S"),
            "notify_url": cfg.notify_url,
            "trade_type": order.trade_type,
        }
        if order.trade_type == "NATIVE":
            params["product_id"] = order.out_trade_no
        else:
            params["openid"] = order.openid
        data = await self._v2("/pay/unifiedorder", params)
        if data.get("result_code") != "SUCCESS":
            reason = data.get("err_code_des") or data.get("err_code") or "refused"
            raise PaymentError(f"WeChat Pay refused the order: {reason}")
        order.prepay_id = data.get("prepay_id") or None
        order.code_url = data.get("code_url") or None
        if not (order.code_url if order.trade_type == "NATIVE" else order.prepay_id):
            raise PaymentError("WeChat Pay's answer has no code_url or prepay_id")

    async def _create_v3(self, order: Order, description: str, expires: datetime) -> None:
        cfg = self.config
        path = "/v3/pay/transactions/" + ("native" if order.trade_type == "NATIVE" else "jsapi")
        payload: dict[str, Any] = {
            "appid": cfg.appid,
            "mchid": cfg.mchid,
            "description": description,
            "out_trade_no": order.out_trade_no,
            "time_expire": _cn_time(expires).isoformat(timespec="seconds"),
            "notify_url": cfg.notify_url,
            "amount": {"total": order.fen, "currency": "CNY"},
        }
        if order.trade_type == "JSAPI":
            payload["payer"] = {"openid": order.openid}
        status, data = await self._v3("POST", path, payload)
        if status != 200:
            raise PaymentError(f"WeChat Pay refused the order: {data.get('code') or status}")
        order.prepay_id = str(data.get("prepay_id") or "") or None
        order.code_url = str(data.get("code_url") or "") or None
        if not (order.code_url if order.trade_type == "NATIVE" else order.prepay_id):
            raise PaymentError("WeChat Pay's answer has no code_url or prepay_id")

    # -- the API, signed both ways --

    async def _v2(self, path: str, params: dict[str, Any]) -> dict[str, str]:
        """One signed v2 call; the fields of an answer that says return_code SUCCESS and whose
        `sign` verifies with our API key (result_code is the caller's to read)."""
        cfg = self.config
        params = {**params, "sign_type": cfg.sign_type}
        params["sign"] = sign_v2(params, cfg.api_key, cfg.sign_type)
        try:
            resp = await self._http.post(
                cfg.api_base + path, content=to_xml(params), headers={"Content-Type": "text/xml"}
            )
        except httpx.HTTPError as exc:
            raise PaymentError(f"WeChat Pay unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise PaymentError(f"WeChat Pay answered HTTP {resp.status_code}")
        try:
            data = from_xml(resp.content)
        except NotifyRejected as exc:
            raise PaymentError("WeChat Pay answered something that is not XML") from exc
        if data.get("return_code") != "SUCCESS":
            raise PaymentError(f"WeChat Pay refused the call: {data.get('return_msg') or 'FAIL'}")
        # Signed with the sign type we asked with: an answer cannot pick a weaker one.
        expected = sign_v2(data, cfg.api_key, cfg.sign_type)
        if not same_sign(expected, data.get("sign", "")):
            raise PaymentError("WeChat Pay's answer is not signed with our key")
        return data

    async def _v3(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One signed v3 call; the status and JSON of an answer whose platform signature verifies.

        429 and 5xx are failures whatever they carry; any other answer must be signed.
        """
        cfg = self.config
        if cfg.private_key_pem is None:
            raise PaymentError("API v3 needs the merchant private key")
        body = "" if payload is None else json.dumps(payload, separators=(",", ":"))
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        signature = sign_v3(cfg.private_key_pem, f"{method}\n{path}\n{ts}\n{nonce}\n{body}\n")
        headers = {
            "Authorization": (
                f'WECHATPAY2-SHA256-RSA2048 mchid="{cfg.mchid}",nonce_str="{nonce}",'
                f'signature="{signature}",timestamp="{ts}",serial_no="{cfg.cert_serial}"'
            ),
            "Accept": "application/json",
        }
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = await self._http.request(
                method, cfg.api_base + path, content=body.encode() or None, headers=headers
            )
        except httpx.HTTPError as exc:
            raise PaymentError(f"WeChat Pay unreachable: {type(exc).__name__}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise PaymentError(f"WeChat Pay answered HTTP {resp.status_code}")
        self._verify_answer(resp)
        if not resp.content:
            return resp.status_code, {}
        try:
            data = resp.json()
        except ValueError as exc:
            raise PaymentError("WeChat Pay answered something that is not JSON") from exc
        if not isinstance(data, dict):
            raise PaymentError("WeChat Pay answered something that is not a JSON object")
        return resp.status_code, data

    def _verify_answer(self, resp: httpx.Response) -> None:
        """A v3 answer's Wechatpay-Signature over "timestamp\nnonce\nbody\n", as notifications."""
        if self._platform_key is None:
            raise PaymentError("no platform certificate to verify WeChat Pay's answer")
        ts = resp.headers.get("wechatpay-timestamp", "")
        nonce = resp.headers.get("wechatpay-nonce", "")
        signature = resp.headers.get("wechatpay-signature", "")
        if not (ts and nonce and signature and resp.headers.get("wechatpay-serial")):
            raise PaymentError(f"WeChat Pay's answer (HTTP {resp.status_code}) is not signed")
        if not fresh_timestamp(ts):
            raise PaymentError("WeChat Pay's answer has a timestamp missing or too far off")
        message = f"{ts}\n{nonce}\n{resp.content.decode('utf-8', 'replace')}\n"
        if not verify_v3(self._platform_key, message, signature):
            raise PaymentError("WeChat Pay's answer does not carry the platform's signature")

    async def query_order(self, out_trade_no: str) -> TradeState:
        """Ask WeChat Pay what became of an order; PaymentError if the answer cannot be had
        or trusted (then nothing may be concluded from it).

        A found order's answer names it (out_trade_no checked here; mchid and appid are the
        caller's to check). A NOT_FOUND answer names none: see TradeState.
        """
        cfg = self.config
        if cfg.v3:
            path = (
                f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}"
                f"?mchid={quote(cfg.mchid, safe='')}"
            )
            status, data = await self._v3("GET", path)
            if status == 404 and data.get("code") == "ORDER_NOT_EXIST":
                return TradeState("", "NOT_FOUND")
            if status != 200:
                raise PaymentError(f"WeChat Pay refused the query: {data.get('code') or status}")
            state = trade_from_v3(data)
        else:
            data = await self._v2("/pay/orderquery", self._v2_order(out_trade_no))
            if data.get("result_code") != "SUCCESS":
                if data.get("err_code") == "ORDERNOTEXIST":
                    return TradeState("", "NOT_FOUND")
                reason = data.get("err_code") or data.get("err_code_des") or "FAIL"
                raise PaymentError(f"WeChat Pay refused the query: {reason}")
            state = trade_from_v2(data)
        if state.out_trade_no != out_trade_no:
            raise PaymentError("WeChat Pay's answer is about another order")
        if not state.state:
            raise PaymentError("WeChat Pay's answer has no trade_state")
        return state

    def _v2_order(self, out_trade_no: str) -> dict[str, Any]:
        """The fields every v2 call about one order sends (query, close)."""
        cfg = self.config
        return {
            "appid": cfg.appid,
            "mch_id": cfg.mchid,
            "out_trade_no": out_trade_no,
            "nonce_str": secrets.token_hex(16),
        }

    async def close_order(self, out_trade_no: str) -> None:
        """Ask WeChat Pay to close an unpaid order so it can no longer be paid; PaymentError if
        WeChat Pay refused (e.g. it was paid just now).

        A confirmation proves nothing about *this* order: v3 answers an empty signed 204 (the
        signature covers only timestamp and nonce), v2 a SUCCESS without out_trade_no or time,
        so either could be replayed from another close. Query the order before concluding.
        """
        cfg = self.config
        if cfg.v3:
            path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close"
            status, data = await self._v3("POST", path, {"mchid": cfg.mchid})
            if status != 204:
                raise PaymentError(f"WeChat Pay refused to close: {data.get('code') or status}")
            return
        data = await self._v2("/pay/closeorder", self._v2_order(out_trade_no))
        if data.get("result_code") != "SUCCESS" and data.get("err_code") != "ORDERCLOSED":
            reason = data.get("err_code") or data.get("err_code_des") or "FAIL"
            raise PaymentError(f"WeChat Pay refused to close: {reason}")

    def jsapi_params(self, order: Order) -> dict[str, str]:
        """What the page passes to WeixinJSBridge.invoke('getBrandWCPayRequest', ...)."""
        if not order.prepay_id:
            raise ValueError("the order has no prepay_id")
        cfg = self.config
        params = {
            "appId": cfg.appid,
            "timeStamp": str(int(time.time())),
            "nonceStr": secrets.token_hex(16),
            "package": f"prepay_id={order.prepay_id}",
        }
        if cfg.v3:
            assert cfg.private_key_pem is not None
            message = "".join(
                f"{params[k]}\n" for k in ("appId", "timeStamp", "nonceStr", "package")
            )
            params["signType"] = "RSA"
            params["paySign"] = sign_v3(cfg.private_key_pem, message)
        else:
            params["signType"] = cfg.sign_type
            params["paySign"] = sign_v2(params, cfg.api_key, cfg.sign_type)
        return params

    def jsapi_page(self, order: Order) -> str:
        """The page a WeChat user opens to pay a JSAPI order (WeixinJSBridge), in zh and en."""
        if order.status == "paid":
            state, params = "已支付 / Already paid", None
        elif order.status == "expired" or datetime.fromisoformat(order.expires_at) <= _now():
            state, params = "订单已过期 / This order has expired", None
        else:
            state, params = "正在打开微信支付… / Opening WeChat Pay…", self.jsapi_params(order)
        button = '<p><button onclick="pay()">支付 Pay</button></p>' if params else ""
        data = json.dumps(params).replace("<", "\\u003c")  # nothing can close the script
        return _PAGE.format(
            cny=format_fen(order.fen),
            credits=format_credits(order.amount_milli),
            state=html.escape(state),
            button=button,
            params=data,
        )

    async def expire_orders(self, now: datetime | None = None) -> int:
        """A `reconcile` pass; returns how many orders it marked expired."""
        return (await self.reconcile(now)).expired

    async def reconcile(self, now: datetime | None = None) -> Sweep:
        """Ask WeChat Pay about open orders that are due (see QUERY_AFTER) and act on the answer.

        SUCCESS credits as a notification would (same checks, same key). Past its deadline an
        order still payable (NOTPAY, PAYERROR) is closed at WeChat Pay and queried again; it is
        marked expired only when a verified answer names it (out_trade_no, mchid, appid) as
        CLOSED or REVOKED, or when WeChat Pay has said "not found" on every answer for
        NOT_FOUND_GRACE past the deadline. Anything else (a failed or unverified query, a
        failed close, a close not yet in effect, USERPAYING, REFUND, an answer that does not
        match the order, not found for a shorter time) leaves the order open, uncredited, for
        a later pass, with at most one warning per order and kind per WARN_EVERY.
        """
        now = now or _now()
        sweep = Sweep()
        open_orders = await self.store.smembers("wxpay:open")
        # Orders settled or expired elsewhere (a notification, another process, the operator)
        # are no longer asked about: drop what we remembered of them.
        self._asked = {otn: t for otn, t in self._asked.items() if otn in open_orders}
        self._warned = {k: t for k, t in self._warned.items() if k[0] in open_orders}
        for otn in sorted(open_orders):
            try:
                await self._reconcile_one(otn, now, sweep)
            except Exception:  # the store or the wallet failing: the next pass tries again
                sweep.failed += 1
                log.exception("wechatpay reconciliation failed", extra={"order": otn})
        return sweep

    async def _reconcile_one(self, otn: str, now: datetime, sweep: Sweep) -> None:
        order = await self.get_order(otn)
        if order is None or order.status != "unpaid":
            await self.store.srem("wxpay:open", otn)
            self._asked.pop(otn, None)
            return
        if not self._query_due(order, now):
            return
        state = await self._ask(otn, now, sweep)
        if state is None:
            return
        past_deadline = datetime.fromisoformat(order.expires_at) <= now
        if past_deadline and state.state in PAYABLE and self._names(state, otn):
            # Still payable at its deadline: close it so nobody can pay it afterwards. The
            # close's answer names no order, so only a fresh query can say what became of it.
            try:
                await self.close_order(otn)
            except PaymentError as exc:
                sweep.failed += 1
                self._warn(otn, now, "wechatpay close failed", reason=str(exc))
                return
            state = await self._ask(otn, now, sweep)
            if state is None:
                return
        await self._act(order, state, now, sweep)

    async def _ask(self, otn: str, now: datetime, sweep: Sweep) -> TradeState | None:
        """WeChat Pay's verified answer about the order, or None (counted, warned) if none."""
        try:
            state = await self.query_order(otn)
        except PaymentError as exc:
            sweep.failed += 1
            self._warn(otn, now, "wechatpay order query failed", reason=str(exc))
            return None
        self._asked[otn] = now
        return state

    async def _act(self, order: Order, state: TradeState, now: datetime, sweep: Sweep) -> None:
        """What a verified query answer means for an open order (see `reconcile`)."""
        otn = order.out_trade_no
        if state.state == "SUCCESS":
            try:
                if await self.settle_queried(state):
                    sweep.credited += 1
                    log.info("wechatpay order settled by query", extra={"order": otn})
            except NotifyRejected as exc:
                sweep.failed += 1
                self._warn(otn, now, "wechatpay query answer does not match the order", exc.reason)
            return
        if state.state == "NOT_FOUND":
            await self._not_found(order, now, sweep)
            return
        if not self._names(state, otn):
            sweep.failed += 1
            self._warn(otn, now, "wechatpay query answer does not match the order", "mchid/appid")
            return
        # WeChat Pay knows the order: a "not found" streak (if any) is over.
        await self.store.delete(_not_found_key(otn))
        if datetime.fromisoformat(order.expires_at) > now:
            return
        if state.state in ("CLOSED", "REVOKED"):
            await self._mark_expired(order)
            sweep.expired += 1
        elif state.state in PAYABLE:
            # Closed just now but the query still says payable: the next pass asks again.
            sweep.failed += 1
            self._warn(otn, now, "wechatpay order still payable after its close", state.state)
        else:
            # USERPAYING (the payer is confirming right now), REFUND, or a state we do not
            # know: nothing to credit or close on our own; ask again, and the operator can look.
            self._warn(otn, now, "wechatpay order past its deadline and not settled", state.state)

    def _names(self, state: TradeState, otn: str) -> bool:
        """Whether a verified answer is about this order of ours (number, merchant, app)."""
        cfg = self.config
        return (state.out_trade_no, state.mchid, state.appid) == (otn, cfg.mchid, cfg.appid)

    async def _not_found(self, order: Order, now: datetime, sweep: Sweep) -> None:
        """WeChat Pay says it has no such order. That answer names no order, so on its own it
        expires nothing: the order stays open until WeChat Pay has said so on every answer for
        NOT_FOUND_GRACE past the deadline (the streak starts at the first such answer, kept in
        the store so a restart does not lose it, and ends at any answer that names the order).
        """
        otn = order.out_trade_no
        key = _not_found_key(otn)
        raw = await self.store.get(key)
        if raw is None:
            raw = now.isoformat()
            ttl = self.config.order_ttl + 2 * NOT_FOUND_GRACE  # gone if nobody asks for long
            if not await self.store.add(key, raw, ttl=ttl):
                raw = await self.store.get(key) or raw
        deadline = datetime.fromisoformat(order.expires_at)
        since = max(datetime.fromisoformat(raw), deadline)
        if (now - since).total_seconds() >= NOT_FOUND_GRACE:
            log.warning(
                "wechatpay has not known the order since %s; marked expired",
                raw,
                extra={"order": otn},
            )
            await self._mark_expired(order)
            await self.store.delete(key)
            sweep.expired += 1
        elif deadline <= now:
            self._warn(otn, now, "wechatpay does not know the order; kept open", f"since {raw}")

    def _warn(self, otn: str, now: datetime, message: str, reason: str) -> None:
        """Log a warning about an order, at most once per WARN_EVERY for this order and
        message: a stuck order is asked about on many passes, and the log names it, not floods."""
        last = self._warned.get((otn, message))
        if last is not None and (now - last).total_seconds() < WARN_EVERY:
            return
        self._warned[(otn, message)] = now
        log.warning(message, extra={"order": otn, "reason": reason})

    def _query_due(self, order: Order, now: datetime) -> bool:
        """Whether an open order is old enough, and long enough since we last asked."""
        last = self._asked.get(order.out_trade_no)
        deadline = datetime.fromisoformat(order.expires_at)
        if deadline <= now:
            if last is None or last < deadline:
                return True  # always at the deadline
            gap = min((now - deadline).total_seconds() / 4, PAST_GAP_MAX)
            return (now - last).total_seconds() >= gap
        age = (now - datetime.fromisoformat(order.created_at)).total_seconds()
        if age < QUERY_AFTER:
            return False
        if last is None:
            return True
        gap = min(max(age / 4, QUERY_GAP_MIN), QUERY_GAP_MAX)
        return (now - last).total_seconds() >= gap

    async def _mark_expired(self, order: Order) -> None:
        # Only on a verified answer naming the order CLOSED/REVOKED, or a long "not found"
        # streak (see `reconcile`). A notification of a payment WeChat Pay accepted before the
        # deadline still credits it (`_settle` does not look at "expired"), and get_order reads
        # the paid marker first.
        order.status = "expired"
        await self._save(order)
        await self.store.srem("wxpay:open", order.out_trade_no)
        self._asked.pop(order.out_trade_no, None)

    async def settle_queried(self, state: TradeState) -> bool:
        """Credit an order WeChat Pay's query answer says is paid, exactly as a notification
        would (same checks, same key); True if this call credited it. NotifyRejected if the
        answer does not match the order. `reconcile` and `creditbot admin order` use it."""
        if state.state != "SUCCESS":
            raise NotifyRejected(f"WeChat Pay says {state.state}, not SUCCESS")
        return await self._settle(state)

    # -- notifications --

    async def handle_v2(self, body: bytes) -> NotifyAnswer:
        """A v2 (XML) payment notification: verify, check, credit once; the XML answer."""
        try:
            data = from_xml(body)
            if not self.config.api_key:
                raise NotifyRejected("v2 is not configured")
            # Pinned to the configured sign type, as API answers are: a notification cannot
            # pick a weaker one (MD5 when HMAC-SHA256 is configured).
            if (data.get("sign_type") or self.config.sign_type) != self.config.sign_type:
                raise NotifyRejected("sign_type is not the configured one")
            expected = sign_v2(data, self.config.api_key, self.config.sign_type)
            if not same_sign(expected, data.get("sign", "")):
                raise NotifyRejected("bad signature")
            if data.get("return_code") != "SUCCESS" or data.get("result_code") != "SUCCESS":
                # A failed payment: nothing to credit, but nothing wrong with the message.
                return NotifyAnswer(200, v2_answer(True), "text/xml")
            credited = await self._settle(trade_from_v2(data))
        except NotifyRejected as exc:
            log.warning("wechatpay notification rejected", extra={"reason": exc.reason})
            return NotifyAnswer(400, v2_answer(False, exc.reason), "text/xml")
        return NotifyAnswer(200, v2_answer(True), "text/xml", credited)

    async def handle_v3(self, headers: Mapping[str, str], body: bytes) -> NotifyAnswer:
        """A v3 (JSON) payment notification: verify, decrypt, check, credit once."""
        try:
            if self._platform_key is None or not self.config.api_v3_key:
                raise NotifyRejected("v3 is not configured")
            h = {k.lower(): v for k, v in headers.items()}
            ts = h.get("wechatpay-timestamp", "")
            nonce = h.get("wechatpay-nonce", "")
            signature = h.get("wechatpay-signature", "")
            if not fresh_timestamp(ts):
                raise NotifyRejected("timestamp missing or too far off")
            message = f"{ts}\n{nonce}\n{body.decode('utf-8', 'replace')}\n"
            if not verify_v3(self._platform_key, message, signature):
                raise NotifyRejected("bad signature")
            try:
                envelope = json.loads(body)
            except ValueError as exc:
                raise NotifyRejected("malformed JSON") from exc
            if not isinstance(envelope, dict):
                raise NotifyRejected("malformed JSON")
            if envelope.get("event_type") != "TRANSACTION.SUCCESS":
                return NotifyAnswer(204, b"", "application/json")
            resource = envelope.get("resource")
            tx = decrypt_v3(self.config.api_v3_key, resource if isinstance(resource, dict) else {})
            if not isinstance(tx, dict):
                raise NotifyRejected("malformed resource")
            if tx.get("trade_state") != "SUCCESS":
                return NotifyAnswer(204, b"", "application/json")
            credited = await self._settle(trade_from_v3(tx))
        except NotifyRejected as exc:
            log.warning("wechatpay notification rejected", extra={"reason": exc.reason})
            answer = json.dumps({"code": "FAIL", "message": exc.reason}).encode()
            return NotifyAnswer(400, answer, "application/json")
        return NotifyAnswer(204, b"", "application/json", credited)

    async def handle(self, headers: Mapping[str, str], body: bytes) -> NotifyAnswer:
        """Either version: v3 notifications carry Wechatpay-Signature and a JSON body."""
        lowered = {k.lower() for k in headers}
        if "wechatpay-signature" in lowered or body.lstrip().startswith(b"{"):
            return await self.handle_v3(headers, body)
        return await self.handle_v2(body)

    async def _settle(self, trade: TradeState) -> bool:
        """Check a verified payment against our order and credit it (once). True if credited."""
        out_trade_no, fen, currency = trade.out_trade_no, trade.fen, trade.currency
        mchid, appid, transaction_id = trade.mchid, trade.appid, trade.transaction_id
        if mchid != self.config.mchid:
            raise NotifyRejected("mchid mismatch")
        if appid != self.config.appid:
            raise NotifyRejected("appid mismatch")
        if currency != "CNY":
            raise NotifyRejected("currency is not CNY")
        order = await self.get_order(out_trade_no)
        if order is None:
            raise NotifyRejected("unknown order")
        try:
            paid_fen = int(fen)
        except (TypeError, ValueError) as exc:
            raise NotifyRejected("amount is not a number") from exc
        if paid_fen != order.fen:
            raise NotifyRejected("amount mismatch")
        if order.status == "paid":
            return False  # a replay: already credited and recorded
        await self.credit(
            order.platform,
            order.user_id,
            order.amount_milli,
            key=order.key,
            reason="WeChat Pay top-up",
            meta={"out_trade_no": out_trade_no, "transaction_id": transaction_id, "fen": order.fen},
        )
        marker = json.dumps({"transaction_id": transaction_id, "paid_at": _now().isoformat()})
        first = await self.store.add(f"wxpay:paid:{out_trade_no}", marker)
        await self.store.srem("wxpay:open", out_trade_no)
        self._asked.pop(out_trade_no, None)
        if first:
            log.info("wechatpay order paid", extra={"order": out_trade_no, "fen": order.fen})
            order.status = "paid"
            order.transaction_id = transaction_id
            if self.on_paid is not None:
                try:
                    await self.on_paid(order)
                except Exception:
                    log.exception("wechatpay on_paid hook failed")
        return first
