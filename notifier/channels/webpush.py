"""Web Push to browsers: RFC 8030 delivery, RFC 8291 payload encryption, RFC 8292 VAPID.

The contact target is the browser's ``PushSubscription.toJSON()``:
``{"endpoint": "https://…", "keys": {"p256dh": <b64url 65-byte point>, "auth": <b64url 16 bytes>}}``.

One ``POST`` to the endpoint per delivery, carrying:

* ``TTL`` (required by RFC 8030 §5.2): ``settings.webpush.ttl_seconds``, or ``ding_ttl_seconds``
  for DINGs, which are worthless once stale;
* ``Urgency: high`` for DINGs, ``normal`` otherwise (§5.3);
* ``Topic`` (§5.4): a collapse key derived from the notice id, so a resend after an ambiguous
  failure *replaces* the pending message instead of showing it twice;
* ``Content-Encoding: aes128gcm`` and a body encrypted for the subscription's keys (RFC 8291);
* ``Authorization: vapid t=<ES256 JWT>, k=<our public key>`` (RFC 8292), the JWT's ``aud`` being
  the endpoint's origin. Tokens are cached per audience and reused for half their lifetime.

Push services answer 201 (accepted: ``Outcome.SENT``, ``Location`` as provider ref); 404/410 mean
the subscription is gone (the contact is disabled); 429 and 5xx are retried; 413 and other 4xx
fail for good (401/403 usually mean the VAPID key is not the one the browser subscribed with).
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from notifier.channels.base import (
    AmbiguousError,
    Capabilities,
    ChannelError,
    InvalidTarget,
    NoticeContent,
    Outcome,
    Outgoing,
    PermanentError,
    Result,
    TransientError,
)
from notifier.channels.http import retry_after as parse_retry_after
from notifier.channels.jwt import b64url, b64url_decode, es256, load_private_key
from notifier.channels.netguard import BlockedAddress, GuardedResolver, check_literal
from notifier.channels.urls import parse_target_url
from notifier.clock import Clock, SystemClock
from notifier.settings import Settings, WebPushSettings

RECORD_SIZE = 4096  # RFC 8291 §4: a push message body is at most 4096 octets ...
HEADER_SIZE = 16 + 4 + 1 + 65  # ... of which salt, rs, idlen and the sender's key take 86
MAX_PLAINTEXT = RECORD_SIZE - HEADER_SIZE - 16 - 1  # minus the GCM tag and the 0x02 delimiter: 3993
VAPID_LIFETIME_SECONDS = 12 * 3600  # RFC 8292 §2: exp no more than 24 h ahead
VAPID_REUSE_SECONDS = VAPID_LIFETIME_SECONDS / 2
VAPID_CACHE_SIZE = 256  # distinct push-service origins; in practice a handful
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


@dataclass(frozen=True, slots=True)
class Subscription:
    endpoint: str
    p256dh: bytes  # the browser's P-256 public key, uncompressed point (65 bytes)
    auth: bytes  # the 16-byte authentication secret

    def as_target(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "keys": {"p256dh": b64url(self.p256dh), "auth": b64url(self.auth)}}


def _decode_key(value: Any, field: str, size: int) -> bytes:
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise InvalidTarget("must be a base64url string", field=field)
    try:
        raw = b64url_decode(value.rstrip("="))
    except (binascii.Error, ValueError):
        raise InvalidTarget("must be a base64url string", field=field) from None
    if len(raw) != size:
        raise InvalidTarget(f"must decode to {size} bytes", field=field)
    return raw


def _check_fields(obj: dict[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InvalidTarget(f"unknown field {unknown[0]!r}", field=f"{prefix}.{unknown[0]}")


def check_endpoint_policy(endpoint: str, allow_private: bool) -> None:
    """Raise ``BlockedAddress`` for a plain-http endpoint or a non-public IP literal, unless the
    operator allows private targets (tests, local push services)."""
    parts = urlsplit(endpoint)
    if parts.scheme != "https" and not allow_private:
        raise BlockedAddress("endpoint must use https")
    check_literal(parts.hostname or "", allow_private)


def parse_subscription(target: Any, allow_private: bool) -> Subscription:
    """Validate a ``PushSubscription`` JSON (pure). ``expirationTime`` is accepted and dropped."""
    if not isinstance(target, dict):
        raise InvalidTarget("target must be a PushSubscription object: {endpoint, keys: {p256dh, auth}}")
    _check_fields(target, {"endpoint", "keys", "expirationTime"}, "target")
    endpoint = target.get("endpoint")
    parse_target_url(endpoint, "target.endpoint", allow_private=True, what="endpoint", allow_fragment=False)
    assert isinstance(endpoint, str)
    try:
        check_endpoint_policy(endpoint, allow_private)
    except BlockedAddress as exc:
        raise InvalidTarget(str(exc), field="target.endpoint") from None
    expiration = target.get("expirationTime")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, int | float)):
        raise InvalidTarget("expirationTime must be null or a number", field="target.expirationTime")
    keys = target.get("keys")
    if not isinstance(keys, dict):
        raise InvalidTarget("keys must be an object with p256dh and auth", field="target.keys")
    _check_fields(keys, {"p256dh", "auth"}, "target.keys")
    p256dh = _decode_key(keys.get("p256dh"), "target.keys.p256dh", 65)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        raise InvalidTarget("must be an uncompressed P-256 point", field="target.keys.p256dh") from None
    auth = _decode_key(keys.get("auth"), "target.keys.auth", 16)
    return Subscription(endpoint, p256dh, auth)


def origin(endpoint: str) -> str:
    """``scheme://host[:port]`` (RFC 6454 serialisation): the VAPID ``aud`` for this endpoint."""
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme)
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}"


def topic_for(notice_id: str) -> str:
    """A stable 32-character base64url collapse key (RFC 8030 §5.4 allows at most 32)."""
    return b64url(hashlib.sha256(b"notifier-topic:" + notice_id.encode()).digest()[:24])


def _payload(notice: NoticeContent, title: str, body: str, url: str | None) -> bytes:
    data: dict[str, str] = {"notice_id": notice.notice_id, "kind": notice.kind, "title": title, "body": body}
    if url:
        data["url"] = url
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def build_payload(notice: NoticeContent, url: str | None = None) -> bytes:
    """The plaintext JSON, with the body (then the title) shortened to fit one 4 KiB record."""
    full = _payload(notice, notice.title, notice.body, url)
    if len(full) <= MAX_PLAINTEXT:
        return full
    title = notice.title
    if len(_payload(notice, title, "", url)) > MAX_PLAINTEXT:
        lo, hi = 0, len(title)  # the longest title prefix that fits with an empty body
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (
                (mid, hi)
                if len(_payload(notice, title[:mid] + "…", "", url)) <= MAX_PLAINTEXT
                else (lo, mid - 1)
            )
        return _payload(notice, title[:lo] + "…", "", url)
    lo, hi = 0, len(notice.body)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = len(_payload(notice, title, notice.body[:mid] + "…", url)) <= MAX_PLAINTEXT
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return _payload(notice, title, notice.body[:lo] + "…", url)


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def encrypt(
    plaintext: bytes,
    ua_public: bytes,
    auth_secret: bytes,
    *,
    salt: bytes | None = None,
    sender_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """RFC 8291 ``aes128gcm``: one record of size 4096, padding delimiter 0x02.

    ``salt`` and ``sender_key`` are fresh random values unless given (tests pin them)."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise PermanentError(f"payload of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
    salt = salt if salt is not None else os.urandom(16)
    sender_key = sender_key or ec.generate_private_key(ec.SECP256R1())
    as_public = _point(sender_key.public_key())
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ua_public)
    ecdh_secret = sender_key.exchange(ec.ECDH(), ua_key)
    # §3.3: IKM = HKDF(salt=auth_secret, ikm=ecdh_secret, info="WebPush: info" 0x00 ua_public as_public)
    ikm = _hkdf(ecdh_secret, auth_secret, b"WebPush: info\x00" + ua_public + as_public, 32)
    # §3.4 / RFC 8188 §2.2-2.3: content-encryption key and nonce from the per-message salt.
    cek = _hkdf(ikm, salt, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(ikm, salt, b"Content-Encoding: nonce\x00", 12)
    ciphertext = AESGCM(cek).encrypt(nonce, plaintext + b"\x02", None)
    return salt + struct.pack("!IB", RECORD_SIZE, len(as_public)) + as_public + ciphertext


def build_request(
    item: Outgoing,
    subscription: Subscription,
    settings: WebPushSettings,
    authorization: str,
    *,
    salt: bytes | None = None,
    sender_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[str, dict[str, str], bytes]:
    """The URL, headers and encrypted body for one delivery (no I/O)."""
    notice = item.notice
    body = encrypt(
        build_payload(notice, item.read_link),
        subscription.p256dh,
        subscription.auth,
        salt=salt,
        sender_key=sender_key,
    )
    headers = {
        "TTL": str(settings.ding_ttl_seconds if notice.urgent else settings.ttl_seconds),
        "Urgency": "high" if notice.urgent else "normal",
        "Topic": topic_for(notice.notice_id),
        "Content-Type": "application/octet-stream",
        "Content-Encoding": "aes128gcm",
        "Authorization": authorization,
    }
    return subscription.endpoint, headers, body


@lru_cache(maxsize=8)
def _load_vapid_key(pem: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = load_private_key(pem)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the VAPID private key must be an EC P-256 key")
    return key, b64url(_point(key.public_key()))


def generate_vapid_keys() -> tuple[str, str]:
    """A new VAPID key pair: (private key PEM, public key as base64url uncompressed point).

    The public key is the ``applicationServerKey`` browsers pass to ``pushManager.subscribe``."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, b64url(_point(key.public_key()))


def vapid_public_key(settings: Settings) -> str:
    """The configured VAPID public key (base64url); ``ValueError`` if web push is not configured."""
    secret = settings.webpush.vapid_private_key
    if secret is None:
        raise ValueError(
            "web push is not configured: set NOTIFIER_WEBPUSH__VAPID_PRIVATE_KEY (see `notifier vapid-keys`)"
        )
    return _load_vapid_key(secret.get_secret_value())[1]


class VapidSigner:
    """``Authorization: vapid t=…, k=…`` headers, one cached token per push-service origin."""

    def __init__(self, pem: str, subject: str, clock: Clock) -> None:
        self._key, self.public_key = _load_vapid_key(pem)
        self._subject = subject
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}  # audience -> (header, issued at)

    def authorization(self, audience: str) -> str:
        now = self._clock.time()
        cached = self._cache.get(audience)
        if cached is not None and now - cached[1] < VAPID_REUSE_SECONDS:
            return cached[0]
        claims = {"aud": audience, "exp": int(now) + VAPID_LIFETIME_SECONDS, "sub": self._subject}
        header = f"vapid t={es256(self._key, claims)}, k={self.public_key}"
        if len(self._cache) >= VAPID_CACHE_SIZE:
            self._cache.clear()
        self._cache[audience] = (header, now)
        return header


async def _reason(resp: aiohttp.ClientResponse) -> str:
    """A short explanation from the push service's error body (autopush JSON, FCM/Apple text)."""
    text = (await resp.content.read(4096)).decode(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:200]
    if isinstance(data, dict):
        for key in ("message", "reason", "error"):
            value = data.get(key)
            if isinstance(value, str):
                return value[:200]
    return ""


def _error_for(status: int, reason: str, retry_after: float | None) -> ChannelError:
    detail = f"HTTP {status}" + (f": {reason}" if reason else "")
    if status in (404, 410):
        return InvalidTarget(f"subscription is gone ({detail})", field="target.endpoint")
    if status in (408, 425, 429) or status >= 500:
        return TransientError(detail, retry_after)
    if status in (401, 403):
        return PermanentError(f"VAPID credentials rejected ({detail})")
    return PermanentError(detail)


class WebPushChannel:
    id = "webpush"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        config = settings.webpush
        if config.vapid_private_key is None:
            raise ValueError(
                "the webpush channel needs settings.webpush.vapid_private_key "
                "(NOTIFIER_WEBPUSH__VAPID_PRIVATE_KEY, a P-256 PEM: run `notifier vapid-keys`)"
            )
        if not config.vapid_subject.startswith(("mailto:", "https://")):
            raise ValueError("settings.webpush.vapid_subject must be a mailto: or https: URI")
        self._clock = clock or SystemClock()
        self._config = config
        self._signer = VapidSigner(
            config.vapid_private_key.get_secret_value(), config.vapid_subject, self._clock
        )
        self.capabilities = Capabilities(
            max_batch=500,
            needs_contact=True,
            max_attempts=settings.push_max_attempts,
            resend_when_ambiguous=True,
            read_link=True,
        )
        self._allow_private = settings.allow_private_targets
        self._concurrency = settings.delivery_concurrency
        self.timeout = aiohttp.ClientTimeout(total=15.0, sock_connect=5.0)
        self._session: aiohttp.ClientSession | None = None
        self._limit: asyncio.Semaphore | None = None

    def validate_target(self, target: Any) -> Any:
        return parse_subscription(target, self._allow_private).as_target()

    def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._limit is None:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency, resolver=GuardedResolver(self._allow_private), ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._session, self._limit

    async def _post(
        self, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, float | None, str | None]:
        session, limit = self._ensure_session()
        async with limit, session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            reason = "" if 200 <= resp.status < 300 else await _reason(resp)
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock.time())
            return resp.status, reason, retry_after, resp.headers.get("Location")

    async def _send_one(self, item: Outgoing) -> Result:
        try:
            # A stored target that the address policy now refuses fails this delivery but does
            # not disable the contact: the policy, not the subscription, changed.
            subscription = parse_subscription(item.target, allow_private=True)
            check_endpoint_policy(subscription.endpoint, self._allow_private)
        except BlockedAddress as exc:
            return Result(item.delivery_id, Outcome.FAILED, error=str(exc))
        except ChannelError as exc:
            return Result.from_error(item.delivery_id, exc)
        try:
            authorization = self._signer.authorization(origin(subscription.endpoint))
            url, headers, body = build_request(item, subscription, self._config, authorization)
        except ChannelError as exc:
            return Result.from_error(item.delivery_id, exc)
        try:
            status, reason, retry_after, location = await self._post(url, headers, body)
        except BlockedAddress as exc:
            return Result(item.delivery_id, Outcome.FAILED, error=str(exc))
        except aiohttp.ClientConnectorError as exc:  # nothing was sent
            if isinstance(exc.os_error, BlockedAddress):
                return Result(item.delivery_id, Outcome.FAILED, error=str(exc.os_error))
            return Result.from_error(item.delivery_id, TransientError(f"connect failed: {exc.strerror}"))
        except aiohttp.ConnectionTimeoutError:
            return Result.from_error(item.delivery_id, TransientError("connect timed out"))
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,
            TimeoutError,
        ) as exc:
            # The request may have reached the push service; a resend replaces it (same Topic).
            return Result.from_error(item.delivery_id, AmbiguousError(f"no response: {type(exc).__name__}"))
        except aiohttp.ClientError as exc:
            return Result.from_error(item.delivery_id, TransientError(type(exc).__name__))
        if 200 <= status < 300:
            return Result(item.delivery_id, Outcome.SENT, provider_ref=location)
        return Result.from_error(item.delivery_id, _error_for(status, reason, retry_after))

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        return list(await asyncio.gather(*(self._send_one(item) for item in batch)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
