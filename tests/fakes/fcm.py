"""A fake Google OAuth token endpoint and FCM HTTP v1 endpoint, on 127.0.0.1.

The token endpoint checks what Google checks: the RS256 signature of the JWT assertion against
the service account's public key, ``iss``, ``scope``, ``aud`` and a lifetime of at most an hour
that has not run out. It issues random access tokens with ``expires_in``. The FCM endpoint
accepts only an unexpired token it issued (401 in Google's error shape otherwise), validates the
message, records it, and answers scripted errors per registration token.

Time comes from the ``clock`` given (share the channel's ``FrozenClock`` to test expiry).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import SecretStr

from notifier.channels.jwt import b64url_decode
from notifier.clock import Clock, SystemClock
from notifier.settings import FcmSettings
from tests.fakes.server import serve_local

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
CLOCK_SKEW = 60
DURATION = re.compile(r"\d{1,10}(\.\d{1,9})?s")

# Scripted answers, by FcmError code: HTTP status, google.rpc status, message.
SCRIPTED: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send messages'."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options"}
TARGET_FIELDS = {"token", "topic", "condition"}
NOTIFICATION_FIELDS = {"title", "body", "image"}
ANDROID_FIELDS = {
    "collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification",
    "fcm_options", "direct_boot_ok",
}  # fmt: skip


def rsa_key(slot: int = 0) -> rsa.RSAPrivateKey:
    """A 2048-bit key per slot, made once per test session (key generation is the slow part)."""
    return _rsa_key(slot)


@functools.cache
def _rsa_key(slot: int) -> rsa.RSAPrivateKey:
    del slot
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass
class FcmMessage:
    token: str
    message: dict[str, Any]
    name: str


class BadMessage(ValueError):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field = field


def _check_message(body: Any) -> dict[str, Any]:
    """What FCM rejects with 400 INVALID_ARGUMENT; returns the message."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise BadMessage("message", "Request contains an invalid argument.")
    unknown = set(body) - {"message", "validate_only"}
    if unknown:
        raise BadMessage(
            "", f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": Cannot find field.'
        )
    message: dict[str, Any] = body["message"]
    unknown = set(message) - MESSAGE_FIELDS - TARGET_FIELDS
    if unknown:
        raise BadMessage(
            "message", f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'message'"
        )
    if len(TARGET_FIELDS & set(message)) != 1 or not isinstance(message.get("token"), str):
        raise BadMessage("message", "Exactly one of token, topic or condition must be set (this fake: token)")
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise BadMessage("message.data", "data values must be strings")
    note = message.get("notification", {})
    if (
        not isinstance(note, dict)
        or set(note) - NOTIFICATION_FIELDS
        or not all(isinstance(v, str) for v in note.values())
    ):
        raise BadMessage("message.notification", "Invalid notification")
    android = message.get("android", {})
    if not isinstance(android, dict) or set(android) - ANDROID_FIELDS:
        raise BadMessage("message.android", "Invalid android config")
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        raise BadMessage("message.android.priority", "Invalid value at 'message.android.priority'")
    ttl = android.get("ttl")
    if ttl is not None and not (isinstance(ttl, str) and DURATION.fullmatch(ttl)):
        raise BadMessage(
            "message.android.ttl",
            "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
        )
    if not isinstance(android.get("collapse_key", ""), str) or not isinstance(
        android.get("notification", {}), dict
    ):
        raise BadMessage("message.android", "Invalid android config")
    return message


def rpc_error(status: int, rpc_status: str, message: str, details: list[dict[str, Any]]) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": rpc_status, "details": details}}
    return web.json_response(body, status=status)


class FakeFcm:
    def __init__(self, clock: Clock | None = None, project_id: str = "notifier-test") -> None:
        self.clock: Clock = clock or SystemClock()
        self.project_id = project_id
        self.key = rsa_key()
        self.private_key_id = secrets.token_hex(20)
        self.client_email = f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com"
        self.expires_in = 3599
        self.messages: list[FcmMessage] = []
        self.rejected = 0  # refused assertions at /token; bad bearer tokens or messages at FCM
        self.token_requests = 0  # every POST /token, accepted or not
        self.accept_tokens = True  # False: FCM refuses even tokens it issued (revoked account)
        # registration token -> FcmError codes (see SCRIPTED) or "drop", answered in turn
        self.responses: dict[str, list[str]] = defaultdict(list)
        self.retry_after: dict[str, str] = {}  # FcmError code -> Retry-After header value
        self.delay = 0.0  # seconds to hold each send, to make concurrency observable
        # awaited after a message is accepted, before it is answered (a test's fault injection)
        self.on_accept: Callable[[FcmMessage], Awaitable[None]] | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self._issued: dict[str, float] = {}  # access token -> expiry
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def service_account(self, key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem(key or self.key),
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,
        }

    def settings_overrides(self, key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        account = json.dumps(self.service_account(key))
        return {
            "fcm": FcmSettings(
                service_account_json=SecretStr(account), base_url=self.base_url, token_url=self.token_url
            )
        }

    def good_target(self) -> str:
        return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(104)}"

    def revoke_tokens(self) -> None:
        """Forget every access token issued so far (as if Google revoked them)."""
        self._issued.clear()

    def per_token(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for m in self.messages:
            counts[m.token] += 1
        return dict(counts)

    # --- the token endpoint -------------------------------------------------------------

    def _verify_assertion(self, assertion: str) -> str | None:
        """None when Google would accept the assertion, else its error_description."""
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(signature_b64)
        except ValueError:
            return "Invalid JWT: malformed"
        if header.get("alg") != "RS256" or header.get("kid", self.private_key_id) != self.private_key_id:
            return "Invalid JWT Signature."
        try:
            self.key.public_key().verify(
                signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return "Invalid JWT Signature."
        if claims.get("iss") != self.client_email:
            return "Invalid issuer: unknown service account"
        if claims.get("aud") != self.token_url:
            return "Invalid JWT: Failed audience check."
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid OAuth scope or ID token audience provided."
        now = self.clock.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            return "Invalid JWT: iat and exp are required"
        if iat > now + CLOCK_SKEW or exp <= now or exp - iat > 3600 or exp > now + 3600 + CLOCK_SKEW:
            return (
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim."
            )
        return None

    async def handle_token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != GRANT_TYPE:
            self.rejected += 1
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}, status=400
            )
        problem = self._verify_assertion(str(form.get("assertion", "")))
        if problem is not None:
            self.rejected += 1
            return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
        token = "ya29.fake-" + secrets.token_urlsafe(48)
        self._issued[token] = self.clock.time() + self.expires_in
        return web.json_response(
            {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    # --- the FCM endpoint ---------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expiry = self._issued.get(token) if scheme == "Bearer" else None
        return self.accept_tokens and expiry is not None and self.clock.time() < expiry

    async def handle_send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not self._authorised(request):
            self.rejected += 1
            return rpc_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential.",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_EXPIRED"}],
            )
        if request.match_info["project"] != self.project_id:
            return rpc_error(
                403, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages.create' denied", []
            )
        try:
            message = _check_message(json.loads(raw))
        except ValueError as exc:
            self.rejected += 1
            field = exc.field if isinstance(exc, BadMessage) else ""
            violation = {"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": str(exc)}]}
            return rpc_error(
                400,
                "INVALID_ARGUMENT",
                str(exc),
                [{"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"}, violation],
            )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        token = message["token"]
        script = self.responses.get(token)
        answer = script.pop(0) if script else None
        if answer is not None and answer != "drop":
            return self._scripted(answer)
        name = f"projects/{self.project_id}/messages/0:{next(self._ids)}%{secrets.token_hex(8)}"
        self.messages.append(FcmMessage(token, message, name))
        if self.on_accept is not None:
            await self.on_accept(self.messages[-1])
        if answer == "drop":  # accepted, then the connection dies before the answer
            assert request.transport is not None
            request.transport.close()
        return web.json_response({"name": name})

    def _scripted(self, code: str) -> web.Response:
        status, rpc_status, text = SCRIPTED[code]
        details: list[dict[str, Any]] = [{"@type": FCM_ERROR, "errorCode": code}]
        if code == "INVALID_ARGUMENT":
            details.append(
                {"@type": BAD_REQUEST, "fieldViolations": [{"field": "message.token", "description": text}]}
            )
        response = rpc_error(status, rpc_status, text, details)
        if code in self.retry_after:
            response.headers["Retry-After"] = self.retry_after[code]
        return response

    async def start(self) -> FakeFcm:
        app = web.Application()
        app.router.add_post("/token", self.handle_token)
        app.router.add_post("/v1/projects/{project}/messages:send", self.handle_send)
        self._runner, self.port = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
