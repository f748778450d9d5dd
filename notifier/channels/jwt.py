"""Compact JWS signing (ES256, RS256) for provider auth: VAPID, APNs provider tokens, Google
service-account assertions. Pure functions over ``cryptography`` keys."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def load_private_key(pem: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("expected an EC (P-256) or RSA private key")
    return key


def _segments(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    c = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{h}.{c}".encode()


def es256(
    key: ec.EllipticCurvePrivateKey, claims: dict[str, Any], headers: dict[str, Any] | None = None
) -> str:
    """ES256: the signature is the raw 64-byte r||s, not DER (RFC 7518 §3.4)."""
    signing_input = _segments({"typ": "JWT", "alg": "ES256", **(headers or {})}, claims)
    der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input.decode()}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def rs256(key: rsa.RSAPrivateKey, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    signing_input = _segments({"typ": "JWT", "alg": "RS256", **(headers or {})}, claims)
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64url(signature)}"
