"""Apple Push Notification service (APNs): HTTP/2 with token-based (JWT) provider auth.

One request per device: ``POST {base_url}/3/device/{device token}`` with the provider token in
``authorization: bearer <jwt>`` and the ``apns-*`` headers, many requests multiplexed as streams
on one HTTP/2 connection. The provider token is an ES256 JWT (``kid`` = key id, ``iss`` = team id,
``iat`` = issue time) signed with the team's .p8 key; Apple rejects a token older than an hour
(``ExpiredProviderToken``) and one replaced more often than every 20 minutes
(``TooManyProviderTokenUpdates``), so one token is shared by every request and refreshed after
50 minutes — or once, sooner, when APNs says it is expired or invalid.

Answers (a JSON body ``{"reason": ...}``): 200 sent (``apns-id`` is the provider ref); 410 and
400 ``BadDeviceToken`` / ``DeviceTokenNotForTopic`` disable the contact; 403 provider-token
errors refresh the token and retry once; 429 and 5xx retry later; other 4xx fail. A connection
lost after the request left is ambiguous: a resend is harmless because it carries the same
``apns-collapse-id`` (the notice) and ``apns-id`` (the delivery).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

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
from notifier.channels.jwt import es256, load_private_key
from notifier.clock import Clock, SystemClock
from notifier.logs import quiet_leaky_libraries
from notifier.settings import Settings

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096  # Apple's limit for a regular (non-VoIP) remote notification
MAX_COLLAPSE_ID_BYTES = 64
MAX_TITLE_BYTES = 256  # when a payload must be shortened, the title keeps at most this much
DING_TTL_SECONDS = 600  # an unanswered DING escalates; a stale one is noise
NOTICE_TTL_SECONDS = 24 * 3600
TOKEN_REFRESH_AFTER = 50 * 60  # Apple: tokens older than 1 h are rejected ...
TOKEN_MIN_REFRESH_INTERVAL = 20 * 60  # ... and refreshing more often than this is refused
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 2  # streams share one connection; a second only while the first is closing
ELLIPSIS = "…"
# apns-id = uuid5(namespace, delivery id): the same delivery always carries the same apns-id.
APNS_ID_NAMESPACE = uuid.UUID("8a0b7c52-3f1e-4f4d-9d0e-6a2f0c1d9b37")
TOKEN_REJECTED = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})
TARGET_GONE = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"})
_HEX = frozenset("0123456789abcdef")


def configured(settings: Settings) -> bool:
    """Whether the APNs channel can be built from these settings (the registry registers it then)."""
    apns = settings.apns
    return bool(apns.key_p8 and apns.key_id and apns.team_id and apns.topic)


def normalise_device_token(target: Any) -> str:
    """A device token is 32+ bytes in hex (Apple: treat its length as variable); lower-cased."""
    if not isinstance(target, str):
        raise InvalidTarget("target must be the device token as a hex string")
    token = target.strip().lower()
    if not 64 <= len(token) <= 200 or len(token) % 2 or not set(token) <= _HEX:
        raise InvalidTarget("device token must be 64..200 hexadecimal characters (whole bytes)")
    return token


def load_signing_key(key_p8: str) -> ec.EllipticCurvePrivateKey:
    """The .p8 key given as the PEM itself or as a path to the file."""
    pem = key_p8 if "-----BEGIN" in key_p8 else Path(key_p8).expanduser().read_text()
    key = load_private_key(pem)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the APNs auth key must be an EC P-256 (.p8) key")
    return key


def make_provider_token(key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, iat: int) -> str:
    return es256(key, {"iss": team_id, "iat": iat}, {"kid": key_id})


class ProviderToken:
    """The one provider token every request shares, refreshed after ``TOKEN_REFRESH_AFTER``.

    When APNs rejects it (expired/invalid), ``rejected()`` replaces it at most once per
    ``TOKEN_MIN_REFRESH_INTERVAL`` and only if no one replaced it already, so a burst of
    concurrent 403s (or a wrong key) cannot turn into ``TooManyProviderTokenUpdates``.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, clock: Clock) -> None:
        self._key, self._key_id, self._team_id, self._clock = key, key_id, team_id, clock
        self._token: str | None = None
        self._issued_at = 0.0
        self._forced_at: float | None = None

    def _issue(self, now: float) -> str:
        self._token = make_provider_token(self._key, self._key_id, self._team_id, int(now))
        self._issued_at = now
        return self._token

    def current(self) -> str:
        now = self._clock.time()
        age = now - self._issued_at
        if self._token is None or age >= TOKEN_REFRESH_AFTER or age < 0:
            return self._issue(now)
        return self._token

    def rejected(self, token: str) -> bool:
        """APNs refused ``token``; True when ``current()`` now holds a different one worth a retry."""
        if token != self._token:
            return True
        now = self._clock.time()
        if self._forced_at is not None and now - self._forced_at < TOKEN_MIN_REFRESH_INTERVAL:
            return False
        self._forced_at = now
        self._issue(now)
        return True


def apns_id(delivery_id: int) -> str:
    return str(uuid.uuid5(APNS_ID_NAMESPACE, f"delivery:{delivery_id}"))


def collapse_id(notice_id: str) -> str:
    """The notice id itself when it fits the 64-byte header, else its SHA-256 in hex (64 chars)."""
    if notice_id.isascii() and notice_id.isprintable() and 0 < len(notice_id) <= MAX_COLLAPSE_ID_BYTES:
        return notice_id
    return hashlib.sha256(notice_id.encode()).hexdigest()


def _encode(notice: NoticeContent, title: str, body: str) -> bytes:
    aps: dict[str, Any] = {
        "alert": {"title": title, "body": body},
        "sound": "default",
        "interruption-level": "time-sensitive" if notice.urgent else "active",
        "thread-id": notice.kind,
    }
    payload = {"aps": aps, "notice_id": notice.notice_id, "kind": notice.kind}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode())


def _shorten(text: str, fits: Callable[[str], bool]) -> str | None:
    """The longest prefix of ``text`` (cut at a space when one is near the end) plus an ellipsis
    for which ``fits(candidate)`` holds; None if not even the ellipsis alone fits."""

    def candidate(n: int) -> str:
        return text[:n].rstrip() + ELLIPSIS

    if not fits(ELLIPSIS):
        return None
    lo, hi = 0, min(len(text), MAX_PAYLOAD_BYTES)  # every character takes at least one byte
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(candidate(mid)):
            lo = mid
        else:
            hi = mid - 1
    space = text.rfind(" ", max(0, lo - 32), lo)
    return candidate(space if space > 0 else lo)


def build_payload(notice: NoticeContent, limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The JSON payload, at most ``limit`` bytes: the body (then, if need be, the title) is
    shortened with an ellipsis; the JSON itself is never cut."""
    payload = _encode(notice, notice.title, notice.body)
    if len(payload) <= limit:
        return payload
    title = notice.title
    if _json_size(title) > MAX_TITLE_BYTES:  # a title shows on one line: leave the room to the body
        title = _shorten(title, lambda t: _json_size(t) <= MAX_TITLE_BYTES) or ""
    if len(_encode(notice, title, ELLIPSIS)) > limit:
        shorter = _shorten(title, lambda t: len(_encode(notice, t, ELLIPSIS)) <= limit)
        if shorter is None:
            raise PermanentError("notice does not fit an APNs payload")
        title = shorter
    payload = _encode(notice, title, notice.body)
    if len(payload) <= limit:
        return payload
    body = _shorten(notice.body, lambda b: len(_encode(notice, title, b)) <= limit)
    assert body is not None  # the title was shortened so that the ellipsis alone fits
    return _encode(notice, title, body)


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    path: str
    headers: dict[str, str]
    body: bytes


def build_request(
    item: Outgoing, device_token: str, topic: str, provider_token: str, now: int
) -> ApnsRequest:
    """The path, headers and body for one delivery (pure: no I/O)."""
    notice = item.notice
    ttl = DING_TTL_SECONDS if notice.urgent else NOTICE_TTL_SECONDS
    headers = {
        "authorization": f"bearer {provider_token}",
        "apns-topic": topic,
        "apns-push-type": "alert",
        "apns-priority": "10" if notice.urgent else "5",
        "apns-expiration": str(now + ttl),
        "apns-collapse-id": collapse_id(notice.notice_id),
        "apns-id": apns_id(item.delivery_id),
    }
    return ApnsRequest(f"/3/device/{device_token}", headers, build_payload(notice))


def map_error(status: int, reason: str, retry_after: float | None = None) -> ChannelError:
    """The channel error for an APNs error answer (anything but 200)."""
    text = f"APNs {status} {reason}".rstrip()
    if status == 410 or (status == 400 and reason in TARGET_GONE):
        return InvalidTarget(text)
    if status == 429 or status >= 500:
        return TransientError(text, retry_after)
    return PermanentError(text)


def map_transport_error(exc: httpx.TransportError) -> ChannelError:
    name = type(exc).__name__
    if isinstance(exc, httpx.ReadError | httpx.ReadTimeout | httpx.RemoteProtocolError):
        # The request left (the HTTP/2 stream was complete) but no answer came back.
        return AmbiguousError(f"APNs connection lost after sending: {name}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return PermanentError(f"APNs request could not be made: {name}")
    return TransientError(f"APNs unreachable: {name}")  # connect, pool, write, proxy


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else ""


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """httpx's default trust (certifi) plus the system store plus ``ca_file``, if given."""
    context = httpx.create_ssl_context()
    context.load_default_certs()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class ApnsChannel:
    id = "apns"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        apns = settings.apns
        if not configured(settings) or apns.key_p8 is None:
            raise ValueError("APNs needs settings.apns.key_p8, key_id, team_id and topic")
        self._clock = clock or SystemClock()
        quiet_leaky_libraries()  # HTTP/2's hpack would log each device token at DEBUG
        self.capabilities = Capabilities(
            max_batch=500,
            needs_contact=True,
            max_attempts=settings.push_max_attempts,
            resend_when_ambiguous=True,  # same apns-collapse-id: a duplicate replaces the first
            circuit_breaker=True,  # one team key, one provider: back off when APNs keeps failing
        )
        self._base_url = apns.base_url.rstrip("/")
        self._topic = apns.topic
        self._ca_file = apns.ca_file
        self._concurrency = settings.delivery_concurrency
        key = load_signing_key(apns.key_p8.get_secret_value())
        self._token = ProviderToken(key, apns.key_id, apns.team_id, self._clock)
        self._client: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None

    def validate_target(self, target: Any) -> Any:
        return normalise_device_token(target)

    def _ensure_client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        if self._client is None or self._limit is None:
            self._client = httpx.AsyncClient(
                http1=False,  # APNs speaks HTTP/2 only: never fall back to HTTP/1.1
                http2=True,
                verify=tls_context(self._ca_file),
                timeout=REQUEST_TIMEOUT_SECONDS,
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
                headers={"user-agent": "notifier-apns/1"},
            )
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._client, self._limit

    async def _post(self, client: httpx.AsyncClient, item: Outgoing, device_token: str) -> Result:
        for attempt in (1, 2):
            provider_token = self._token.current()
            request = build_request(item, device_token, self._topic, provider_token, int(self._clock.time()))
            try:
                response = await client.post(
                    self._base_url + request.path, content=request.body, headers=request.headers
                )
            except httpx.TransportError as exc:
                return Result.from_error(item.delivery_id, map_transport_error(exc))
            except httpx.RequestError as exc:  # e.g. an undecodable answer: the request was sent
                return Result.from_error(item.delivery_id, AmbiguousError(f"APNs: {type(exc).__name__}"))
            if response.status_code == 200:
                ref = response.headers.get("apns-id") or request.headers["apns-id"]
                return Result(item.delivery_id, Outcome.SENT, provider_ref=ref)
            reason = _reason(response)
            if response.status_code == 403 and reason in TOKEN_REJECTED:
                log.warning("APNs refused the provider token (%s), attempt %d", reason, attempt)
                if attempt == 1 and self._token.rejected(provider_token):
                    continue
            retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock.time())
            return Result.from_error(item.delivery_id, map_error(response.status_code, reason, retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_one(self, client: httpx.AsyncClient, limit: asyncio.Semaphore, item: Outgoing) -> Result:
        try:
            device_token = normalise_device_token(item.target)
        except InvalidTarget as exc:
            return Result.from_error(item.delivery_id, exc)
        async with limit:
            try:
                return await self._post(client, item, device_token)
            except ChannelError as exc:  # a notice that cannot fit a payload
                return Result.from_error(item.delivery_id, exc)

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        if not batch:
            return []
        client, limit = self._ensure_client()
        return list(await asyncio.gather(*(self._send_one(client, limit, item) for item in batch)))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._limit = None
