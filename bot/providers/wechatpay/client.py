"""WeChat Pay's API as one merchant account speaks it: orders, queries, closes, notifications.

`WeChatPayClient` signs every call and verifies every answer it returns: v3 by the platform
key's RSA-SHA256 signature over "timestamp\\nnonce\\nbody\\n" (timestamps more than 5 minutes
off refused), v2 by its `sign` with the API key and the configured sign type, after return_code
SUCCESS. Notifications are pinned to the configured sign type too. What the answers mean for
our orders (crediting, expiring) is `bot.payments.wechatpay`'s business, not this module's.

A close's answer names no order (v3: an empty signed 204 whose signature covers only timestamp
and nonce; v2: no out_trade_no and no timestamp, so a captured one replays forever), and neither
does "order not found" (v3: a 404 without the number; v2: ORDERNOTEXIST): `TradeState` says so.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.providers.wechatpay.errors import NotifyRejected, PaymentError
from bot.providers.wechatpay.signing import (
    decrypt_v3,
    fresh_timestamp,
    from_xml,
    load_public_key,
    same_sign,
    sign_v2,
    sign_v3,
    to_xml,
    v2_answer,
    verify_v3,
)


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


@dataclass(frozen=True, slots=True)
class TradeState:
    """WeChat Pay's verified word about one transaction (a query's answer or a notification).

    `state` is WeChat Pay's trade_state (SUCCESS, NOTPAY, CLOSED, REVOKED, USERPAYING,
    PAYERROR, REFUND) or NOT_FOUND when WeChat Pay has no such order; the other fields are as
    WeChat Pay reported them, for the caller to check against its order. A NOT_FOUND answer
    names no order (WeChat Pay's 404 / ORDERNOTEXIST carries no number), so its out_trade_no
    is empty: it is not evidence about any particular order.
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


@dataclass(frozen=True, slots=True)
class NotifyAnswer:
    """What to send back to WeChat Pay for a notification."""

    status: int
    body: bytes
    content_type: str
    credited: bool = False


def accepted(v3: bool, credited: bool = False) -> NotifyAnswer:
    """The answer that stops WeChat Pay repeating a notification."""
    if v3:
        return NotifyAnswer(204, b"", "application/json", credited)
    return NotifyAnswer(200, v2_answer(True), "text/xml", credited)


def refused(v3: bool, reason: str) -> NotifyAnswer:
    """The answer to a notification that credits nothing (`reason` has no secrets)."""
    if v3:
        body = json.dumps({"code": "FAIL", "message": reason}).encode()
        return NotifyAnswer(400, body, "application/json")
    return NotifyAnswer(400, v2_answer(False, reason), "text/xml")


def is_v3_notification(headers: Mapping[str, str], body: bytes) -> bool:
    """v3 notifications carry Wechatpay-Signature and a JSON body; v2 ones are XML."""
    lowered = {k.lower() for k in headers}
    return "wechatpay-signature" in lowered or body.lstrip().startswith(b"{")


@dataclass(frozen=True, slots=True)
class Prepay:
    """WeChat Pay's answer to a new order: what the payer scans (NATIVE) or opens (JSAPI)."""

    code_url: str | None
    prepay_id: str | None


def _cn_time(dt: datetime) -> datetime:
    """WeChat Pay reads times in China Standard Time."""
    return dt.astimezone(timezone(timedelta(hours=8)))


class WeChatPayClient:
    """Signed calls to WeChat Pay (v3 when its keys are configured, else v2), verified answers.

    `config` is read on every call (an operator's tool or a test may change it in place).
    """

    def __init__(self, config: PayConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self._own_http = http is None
        self.platform_key: rsa.RSAPublicKey | None = (
            load_public_key(config.platform_cert_pem) if config.platform_cert_pem else None
        )

    async def close(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # -- orders --

    async def create_order(
        self,
        out_trade_no: str,
        fen: int,
        *,
        trade_type: str,
        openid: str | None,
        description: str,
        expires: datetime,
        client_ip: str,
    ) -> Prepay:
        """Ask WeChat Pay for a NATIVE (QR code) or JSAPI (in-WeChat) order of `fen` fen that
        it refuses to take payment for after `expires`; PaymentError if it will not."""
        if self.config.v3:
            prepay = await self._create_v3(
                out_trade_no, fen, trade_type, openid, description, expires
            )
        else:
            prepay = await self._create_v2(
                out_trade_no, fen, trade_type, openid, description, expires, client_ip
            )
        if not (prepay.code_url if trade_type == "NATIVE" else prepay.prepay_id):
            raise PaymentError("WeChat Pay's answer has no code_url or prepay_id")
        return prepay

    async def _create_v2(
        self,
        out_trade_no: str,
        fen: int,
        trade_type: str,
        openid: str | None,
        description: str,
        expires: datetime,
        client_ip: str,
    ) -> Prepay:
        cfg = self.config
        params: dict[str, Any] = {
            "appid": cfg.appid,
            "mch_id": cfg.mchid,
            "nonce_str": secrets.token_hex(16),
            "sign_type": cfg.sign_type,
            "body": description,
            "out_trade_no": out_trade_no,
            "total_fee": fen,
            "fee_type": "CNY",
            "spbill_create_ip": client_ip,
            "time_expire": _cn_time(expires).strftime("%Y%m%d%H%M%S"),
            "notify_url": cfg.notify_url,
            "trade_type": trade_type,
        }
        if trade_type == "NATIVE":
            params["product_id"] = out_trade_no
        else:
            params["openid"] = openid
        data = await self._v2("/pay/unifiedorder", params)
        if data.get("result_code") != "SUCCESS":
            reason = data.get("err_code_des") or data.get("err_code") or "refused"
            raise PaymentError(f"WeChat Pay refused the order: {reason}")
        return Prepay(data.get("code_url") or None, data.get("prepay_id") or None)

    async def _create_v3(
        self,
        out_trade_no: str,
        fen: int,
        trade_type: str,
        openid: str | None,
        description: str,
        expires: datetime,
    ) -> Prepay:
        cfg = self.config
        path = "/v3/pay/transactions/" + ("native" if trade_type == "NATIVE" else "jsapi")
        payload: dict[str, Any] = {
            "appid": cfg.appid,
            "mchid": cfg.mchid,
            "description": description,
            "out_trade_no": out_trade_no,
            "time_expire": _cn_time(expires).isoformat(timespec="seconds"),
            "notify_url": cfg.notify_url,
            "amount": {"total": fen, "currency": "CNY"},
        }
        if trade_type == "JSAPI":
            payload["payer"] = {"openid": openid}
        status, data = await self._v3("POST", path, payload)
        if status != 200:
            raise PaymentError(f"WeChat Pay refused the order: {data.get('code') or status}")
        return Prepay(
            str(data.get("code_url") or "") or None, str(data.get("prepay_id") or "") or None
        )

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

    def jsapi_params(self, prepay_id: str) -> dict[str, str]:
        """What a pay page passes to WeixinJSBridge.invoke('getBrandWCPayRequest', ...)."""
        cfg = self.config
        params = {
            "appId": cfg.appid,
            "timeStamp": str(int(time.time())),
            "nonceStr": secrets.token_hex(16),
            "package": f"prepay_id={prepay_id}",
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

    # -- notifications --

    def read_v2(self, body: bytes) -> TradeState | None:
        """A v2 (XML) payment notification, verified: its transaction, or None for a failed
        payment (nothing to credit, nothing wrong with the message). NotifyRejected if it is
        malformed or not signed with our key and the configured sign type."""
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
            return None
        return trade_from_v2(data)

    def read_v3(self, headers: Mapping[str, str], body: bytes) -> TradeState | None:
        """A v3 (JSON) payment notification, verified and decrypted: its transaction, or None
        for an event that is not a successful payment. NotifyRejected if it does not verify."""
        if self.platform_key is None or not self.config.api_v3_key:
            raise NotifyRejected("v3 is not configured")
        h = {k.lower(): v for k, v in headers.items()}
        ts = h.get("wechatpay-timestamp", "")
        nonce = h.get("wechatpay-nonce", "")
        signature = h.get("wechatpay-signature", "")
        if not fresh_timestamp(ts):
            raise NotifyRejected("timestamp missing or too far off")
        message = f"{ts}\n{nonce}\n{body.decode('utf-8', 'replace')}\n"
        if not verify_v3(self.platform_key, message, signature):
            raise NotifyRejected("bad signature")
        try:
            envelope = json.loads(body)
        except ValueError as exc:
            raise NotifyRejected("malformed JSON") from exc
        if not isinstance(envelope, dict):
            raise NotifyRejected("malformed JSON")
        if envelope.get("event_type") != "TRANSACTION.SUCCESS":
            return None
        resource = envelope.get("resource")
        tx = decrypt_v3(self.config.api_v3_key, resource if isinstance(resource, dict) else {})
        if not isinstance(tx, dict):
            raise NotifyRejected("malformed resource")
        if tx.get("trade_state") != "SUCCESS":
            return None
        return trade_from_v3(tx)

    # -- the API, signed both ways --

    def _v2_order(self, out_trade_no: str) -> dict[str, Any]:
        """The fields every v2 call about one order sends (query, close)."""
        cfg = self.config
        return {
            "appid": cfg.appid,
            "mch_id": cfg.mchid,
            "out_trade_no": out_trade_no,
            "nonce_str": secrets.token_hex(16),
        }

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
        """Check a v3 answer's Wechatpay-Signature (over timestamp, nonce and body)."""
        if self.platform_key is None:
            raise PaymentError("no platform certificate to verify WeChat Pay's answer")
        ts = resp.headers.get("wechatpay-timestamp", "")
        nonce = resp.headers.get("wechatpay-nonce", "")
        signature = resp.headers.get("wechatpay-signature", "")
        if not (ts and nonce and signature and resp.headers.get("wechatpay-serial")):
            raise PaymentError(f"WeChat Pay's answer (HTTP {resp.status_code}) is not signed")
        if not fresh_timestamp(ts):
            raise PaymentError("WeChat Pay's answer has a timestamp missing or too far off")
        message = f"{ts}\n{nonce}\n{resp.content.decode('utf-8', 'replace')}\n"
        if not verify_v3(self.platform_key, message, signature):
            raise PaymentError("WeChat Pay's answer does not carry the platform's signature")
