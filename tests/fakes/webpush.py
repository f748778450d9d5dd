"""A fake Web Push service (RFC 8030) that checks what real push services check, and also plays
the browser: it decrypts every accepted message with the subscription's private key.

Checks, in the order a push service makes them (errors use autopush's JSON shape
``{"code", "errno", "error", "message"}``):

* the endpoint names a subscription made with :meth:`FakePushService.subscribe` (else 404);
* ``Authorization: vapid t=<JWT>, k=<key>`` (RFC 8292): the ES256 signature verifies against
  ``k``, ``aud`` is this service's origin, ``exp`` is in the future and at most 24 h ahead,
  ``sub`` is a ``mailto:`` or ``https:`` URI (else 401);
* ``k`` is the application server key the subscription was created with (else 403, as FCM and
  Apple answer when the VAPID key is not the one the browser subscribed with);
* ``TTL`` is present (400), ``Urgency`` / ``Topic`` are well formed (400), the body is
  ``aes128gcm`` (400) and at most 4096 bytes (413);
* the body decrypts with ``http_ece`` (a real push service cannot tell; the browser would drop
  it; here it is a 400 so the test sees it).

Accepted messages are answered ``201 Created`` with a ``Location`` and recorded in ``messages``;
``inbox(path)`` shows what the browser would finally display after ``Topic`` replacement.
``responses[path]`` scripts answers per subscription: a status (with ``headers_for[status]``),
``"drop"`` (close the connection without accepting) or ``"drop-after-accept"`` (accept, record,
then close the connection before answering: the ambiguous case).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import SecretStr

from notifier.clock import Clock, SystemClock
from notifier.settings import WebPushSettings
from tests.fakes.server import serve_local

Script = int | Literal["drop", "drop-after-accept"]
SUBJECT = "mailto:push-tests@example.org"
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 410: "Gone"}
_REASONS |= {413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error"}
_REASONS |= {503: "Service Unavailable"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class Rejected(Exception):
    def __init__(self, status: int, errno: int, message: str) -> None:
        super().__init__(message)
        self.status, self.errno, self.message = status, errno, message


@dataclass
class BrowserSubscription:
    path: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: bytes  # the VAPID public key passed to pushManager.subscribe()


@dataclass
class PushMessage:
    path: str
    payload: dict[str, Any]  # the decrypted JSON
    headers: dict[str, str]
    claims: dict[str, Any]  # the verified VAPID JWT claims
    message_id: str

    @property
    def topic(self) -> str | None:
        return self.headers.get("Topic")


@dataclass
class FakePushService:
    clock: Clock = field(default_factory=SystemClock)
    messages: list[PushMessage] = field(default_factory=list)
    rejected: int = 0
    rejections: list[tuple[int, str]] = field(default_factory=list)  # (status, message)
    responses: dict[str, list[Script]] = field(default_factory=lambda: defaultdict(list))
    headers_for: dict[int, dict[str, str]] = field(default_factory=dict)
    error_messages: dict[int, str] = field(default_factory=dict)  # "message" of scripted errors
    subscriptions: dict[str, BrowserSubscription] = field(default_factory=dict)
    # The application server's VAPID key pair, as the operator configured it.
    vapid_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, path: str) -> str:
        return f"{self.origin}{path}"

    # --- the browser's side -------------------------------------------------------------------

    def subscribe(
        self, name: str | None = None, application_server_key: bytes | None = None
    ) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey, bytes]:
        """What ``pushManager.subscribe()`` gives a page: (PushSubscription JSON, the browser's
        private key, the auth secret). Bound to our VAPID key unless another one is given."""
        path = f"/wpush/v2/{name or uuid.uuid4().hex}"
        key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        server_key = application_server_key or point(self.vapid_key.public_key())
        self.subscriptions[path] = BrowserSubscription(path, key, auth, server_key)
        target = {
            "endpoint": self.endpoint(path),
            "expirationTime": None,
            "keys": {"p256dh": b64url(point(key.public_key())), "auth": b64url(auth)},
        }
        return target, key, auth

    def good_target(self) -> dict[str, Any]:
        return self.subscribe()[0]

    def settings_overrides(self) -> dict[str, Any]:
        return {
            "allow_private_targets": True,  # the fake listens on loopback over plain http
            "webpush": WebPushSettings(
                vapid_private_key=SecretStr(pem(self.vapid_key)), vapid_subject=SUBJECT
            ),
        }

    def inbox(self, path: str) -> list[PushMessage]:
        """What the browser ends up with: a message with the same Topic replaces the earlier one."""
        shown: dict[str, PushMessage] = {}
        for m in self.messages:
            if m.path == path:
                shown[m.topic or m.message_id] = m
        return list(shown.values())

    # --- the push service's side --------------------------------------------------------------

    def verify_vapid(self, authorization: str) -> tuple[dict[str, Any], bytes]:
        """The JWT claims and the ``k`` key, or ``Rejected(401)``."""
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise Rejected(401, 109, "missing or non-vapid Authorization header")
        values: dict[str, str] = {}
        for part in params.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep:
                raise Rejected(401, 109, "malformed vapid parameters")
            values[name.strip().lower()] = value.strip()
        if set(values) != {"t", "k"}:
            raise Rejected(401, 109, "vapid needs exactly t= and k=")
        try:
            k = b64url_decode(values["k"])
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), k)
            head_b64, claims_b64, sig_b64 = values["t"].split(".")
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(sig_b64)
        except (ValueError, binascii.Error):
            raise Rejected(401, 109, "malformed token or key") from None
        if not isinstance(header, dict) or header.get("alg") != "ES256" or header.get("typ", "JWT") != "JWT":
            raise Rejected(401, 109, "token must be an ES256 JWT")
        if len(signature) != 64:
            raise Rejected(401, 109, "ES256 signature must be 64 bytes")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Rejected(401, 109, "token signature does not verify against k") from None
        if not isinstance(claims, dict):
            raise Rejected(401, 109, "claims must be an object")
        if claims.get("aud") != self.origin:
            raise Rejected(401, 109, f"aud must be {self.origin}")
        exp, now = claims.get("exp"), self.clock.time()
        if not isinstance(exp, int) or isinstance(exp, bool) or not now < exp <= now + 24 * 3600:
            raise Rejected(401, 109, "exp must be in the future and at most 24 hours ahead")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https://")):
            raise Rejected(401, 109, "sub must be a mailto: or https: URI")
        return claims, k

    def _check_headers(self, request: web.Request, body: bytes) -> None:
        ttl = request.headers.get("TTL", "")
        if not ttl.isdigit():
            raise Rejected(400, 111, "missing or invalid TTL header")
        if request.headers.get("Urgency", "normal") not in ("very-low", "low", "normal", "high"):
            raise Rejected(400, 110, "invalid Urgency header")
        topic = request.headers.get("Topic")
        if topic is not None and not _TOPIC.match(topic):
            raise Rejected(400, 110, "Topic must be at most 32 base64url characters")
        if request.headers.get("Content-Encoding") != "aes128gcm":
            raise Rejected(400, 110, "Content-Encoding must be aes128gcm")
        if len(body) > 4096:
            raise Rejected(413, 104, "payload too large")

    def _decrypt(self, sub: BrowserSubscription, body: bytes) -> dict[str, Any]:
        try:
            plaintext = http_ece.decrypt(
                body, private_key=sub.private_key, dh=None, auth_secret=sub.auth, version="aes128gcm"
            )
            payload = json.loads(plaintext)
        except (http_ece.ECEException, ValueError) as exc:
            raise Rejected(400, 110, f"payload does not decrypt: {exc}") from None
        if not isinstance(payload, dict):
            raise Rejected(400, 110, "payload is not a JSON object")
        return payload

    @staticmethod
    def _error(status: int, errno: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"code": status, "errno": errno, "error": _REASONS.get(status, "Error"), "message": message}
        return web.json_response(body, status=status, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        sub = self.subscriptions.get(request.path)
        try:
            if sub is None:
                raise Rejected(404, 102, "no such subscription")
            claims, k = self.verify_vapid(request.headers.get("Authorization", ""))
            if k != sub.application_server_key:
                raise Rejected(403, 109, "VAPID key does not match the subscription's applicationServerKey")
            self._check_headers(request, body)
            script = self.responses.get(request.path)
            action: Script = script.pop(0) if script else 201
            if action == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=201)
            if isinstance(action, int) and action != 201:
                errno = {404: 102, 410: 103, 413: 104}.get(action, 999)
                text = self.error_messages.get(action, "scripted")
                return self._error(action, errno, text, self.headers_for.get(action))
            payload = self._decrypt(sub, body)
        except Rejected as exc:
            self.rejected += 1
            self.rejections.append((exc.status, exc.message))
            return self._error(exc.status, exc.errno, exc.message)
        message = PushMessage(request.path, payload, dict(request.headers), claims, uuid.uuid4().hex)
        self.messages.append(message)
        if action == "drop-after-accept":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=201)
        return web.Response(
            status=201,
            headers={"Location": f"{self.origin}/m/{message.message_id}", "TTL": request.headers["TTL"]},
        )

    async def start(self) -> FakePushService:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner, self.port = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
