"""WeChat Pay's signatures, encryption and XML: pure functions, no I/O.

v2 signs sorted "k=v" pairs plus "&key=API_KEY" with MD5 or HMAC-SHA256 and speaks flat XML;
v3 signs "method\npath\ntimestamp\nnonce\nbody\n" with the merchant's RSA key (SHA-256), WeChat
Pay signs its answers and notifications "timestamp\nnonce\nbody\n" with the platform key, and a
notification's resource is AES-256-GCM with the APIv3 key. A malformed signature or timestamp
(not ASCII, too long) is a plain rejection, never an exception. No wechatpy here (the bot wing
stays platform-free): hashlib/hmac and cryptography.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from defusedxml.ElementTree import fromstring as parse_xml

from bot.providers.wechatpay.errors import NotifyRejected

V3_MAX_SKEW_SECONDS = 300
# A Wechatpay-Timestamp: ASCII digits only (str.isdigit takes "²", which int() refuses), and
# short enough for int() (which refuses more than 4,300 digits).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


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
