"""Firebase Cloud Messaging, HTTP v1 API: one POST per registration token.

Auth is OAuth 2.0 for service accounts: an RS256 JWT assertion signed with the service
account's key is exchanged at Google's token endpoint for a bearer access token, which is
cached (until shortly before ``expires_in`` runs out) and shared by every send of this channel.
A 401 from FCM drops that token and retries the send once with a fresh one.

Error mapping (FCM answers with a ``google.rpc.Status`` JSON body whose ``details`` carry an
``FcmError.errorCode``):

    404 UNREGISTERED, 403 SENDER_ID_MISMATCH, 400 naming ``message.token``  -> InvalidTarget
    400 INVALID_ARGUMENT (anything else), 401 THIRD_PARTY_AUTH_ERROR, 4xx   -> PermanentError
    429 QUOTA_EXCEEDED                         -> TransientError, at least 60 s (Retry-After if longer)
    500 INTERNAL, 503 UNAVAILABLE              -> TransientError, Retry-After honoured
    connection dropped after the request went out                         -> AmbiguousError

A resend is harmless: every message carries a collapse key and a notification tag derived from
the notice, so a duplicate replaces the first on the device instead of stacking.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from notifier.channels.base import (
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
from notifier.channels.http import transport_error
from notifier.channels.jwt import load_private_key, rs256
from notifier.clock import Clock, SystemClock
from notifier.settings import Settings

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google accepts assertions valid for at most one hour
REFRESH_MARGIN = 300.0  # refresh this long before the access token expires
QUOTA_BACKOFF = 60.0  # FCM asks for at least a minute after QUOTA_EXCEEDED
MAX_TOKEN_LENGTH = 4096
REQUEST_TIMEOUT = 10.0
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    project_id: str
    client_email: str
    private_key: rsa.RSAPrivateKey
    private_key_id: str | None


def load_service_account(value: str) -> ServiceAccount:
    """Parse a service-account key: the JSON itself, or a path to the JSON file.

    Its ``token_uri`` is not used: ``settings.fcm.token_url`` names the token endpoint (and is
    the assertion's audience), so a deployment can point it at a proxy."""
    text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("fcm.service_account_json is not valid JSON") from None
    if not isinstance(info, dict):
        raise ValueError("fcm.service_account_json must be a JSON object")
    missing = [k for k in ("project_id", "client_email", "private_key") if not isinstance(info.get(k), str)]
    if missing:
        raise ValueError(f"fcm.service_account_json lacks {', '.join(missing)}")
    key = load_private_key(info["private_key"])
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("fcm.service_account_json private_key must be an RSA key")
    return ServiceAccount(
        project_id=info["project_id"],
        client_email=info["client_email"],
        private_key=key,
        private_key_id=info.get("private_key_id") or None,
    )


def build_assertion(account: ServiceAccount, token_url: str, now: int) -> str:
    """The signed JWT exchanged for an access token (pure)."""
    claims = {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": token_url,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    }
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return rs256(account.private_key, claims, headers)


def build_token_request(account: ServiceAccount, token_url: str, now: int) -> tuple[dict[str, str], bytes]:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    form = {"grant_type": GRANT_TYPE, "assertion": build_assertion(account, token_url, now)}
    return headers, urlencode(form).encode()


def collapse_key(notice_id: str) -> str:
    return f"notice-{notice_id}"


def build_message(token: str, notice: NoticeContent, ding_ttl_seconds: int) -> dict[str, Any]:
    """The ``messages:send`` body for one registration token (pure)."""
    android: dict[str, Any] = {
        "priority": "HIGH" if notice.urgent else "NORMAL",
        "collapse_key": collapse_key(notice.notice_id),
        "notification": {"tag": collapse_key(notice.notice_id)},
    }
    if notice.urgent:
        android["ttl"] = f"{ding_ttl_seconds}s"
    return {
        "message": {
            "token": token,
            "notification": {"title": notice.title, "body": notice.body},
            "data": {"notice_id": notice.notice_id, "kind": notice.kind},
            "android": android,
        }
    }


def build_request(
    base_url: str, project_id: str, access_token: str, message: dict[str, Any]
) -> tuple[str, dict[str, str], bytes]:
    url = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"
    headers = {"authorization": f"Bearer {access_token}", "content-type": "application/json; charset=UTF-8"}
    return url, headers, json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def _status_error(payload: Any) -> dict[str, Any]:
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def fcm_error_code(payload: Any) -> str | None:
    for detail in _details(_status_error(payload)):
        if detail.get("@type") == FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    return None


def _names_token(error: dict[str, Any]) -> bool:
    for detail in _details(error):
        if detail.get("@type") != BAD_REQUEST_TYPE:
            continue
        violations = detail.get("fieldViolations")
        if isinstance(violations, list) and any(
            isinstance(v, dict) and v.get("field") == "message.token" for v in violations
        ):
            return True
    return "registration token" in str(error.get("message", "")).lower()


def fcm_error(status: int, payload: Any, retry_after: float | None) -> ChannelError:
    """Map one FCM error answer to the channel error tree (pure).

    A target is only declared invalid when FCM's own error body says so: a bare 404 from a
    misconfigured proxy must not disable every contact."""
    error = _status_error(payload)
    code = fcm_error_code(payload)
    rpc_status = str(error.get("status") or "")
    label = f"FCM {status} {code or rpc_status or 'error'}"
    message = str(error.get("message") or "")[:200]
    if code == "UNREGISTERED" or (status == 404 and rpc_status == "NOT_FOUND"):
        return InvalidTarget(f"{label}: the registration token is no longer valid")
    if code == "SENDER_ID_MISMATCH":
        return InvalidTarget(f"{label}: the token belongs to another sender")
    if status == 400 and rpc_status == "INVALID_ARGUMENT" and _names_token(error):
        return InvalidTarget(f"{label}: {message or 'invalid registration token'}")
    if status == 429 or code == "QUOTA_EXCEEDED":
        return TransientError(label, max(retry_after or 0.0, QUOTA_BACKOFF))
    if status >= 500:
        return TransientError(label, retry_after)
    return PermanentError(f"{label}: {message}" if message else label)


def token_error(status: int, payload: Any, retry_after: float | None) -> ChannelError:
    """Map a failed token exchange; a rejected assertion is a configuration error."""
    label = f"OAuth token request failed: HTTP {status}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        label += f" {payload['error']}"
        if isinstance(payload.get("error_description"), str):
            label += f" ({payload['error_description'][:200]})"
    if status == 429 or status >= 500:
        return TransientError(label, retry_after)
    return PermanentError(label)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class AccessTokens:
    """The cached OAuth access token. One refresh at a time: concurrent callers wait for it and
    share its outcome, success or failure, instead of each asking the token endpoint."""

    def __init__(self, account: ServiceAccount, token_url: str, clock: Clock) -> None:
        self._account = account
        self._token_url = token_url
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._refreshes = 0  # completed refreshes, successful or not
        self._last_error: ChannelError | None = None

    async def get(self, session: aiohttp.ClientSession, stale: str | None = None) -> str:
        """A valid token; ``stale`` is one FCM just refused, dropped unless already replaced."""
        seen = self._refreshes
        async with self._lock:
            if stale is not None and self._token == stale:
                self._token = None
            if self._token is not None and self._clock.time() < self._refresh_at:
                return self._token
            if self._refreshes != seen and self._last_error is not None:
                raise copy.copy(self._last_error)  # the refresh we waited for failed
            try:
                self._token, self._refresh_at = await self._fetch(session)
                self._last_error = None
            except ChannelError as exc:
                self._token, self._last_error = None, exc
                raise
            finally:
                self._refreshes += 1
            return self._token

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        now = self._clock.time()
        headers, body = build_token_request(self._account, self._token_url, int(now))
        try:
            async with session.post(self._token_url, data=body, headers=headers) as resp:
                payload = _json(await resp.read())
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("retry-after"), now)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Asking for a token twice is harmless: never ambiguous.
            raise TransientError(f"OAuth token request failed: {transport_error(exc)}") from None
        if status != 200:
            raise token_error(status, payload, retry_after)
        token = payload.get("access_token") if isinstance(payload, dict) else None
        expires_in = payload.get("expires_in") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise TransientError("OAuth token response lacks access_token / expires_in")
        return token, now + expires_in - min(REFRESH_MARGIN, expires_in / 2)


class FcmChannel:
    id = "fcm"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        secret = settings.fcm.service_account_json
        if secret is None:
            raise ValueError("fcm.service_account_json is not set")
        self._clock = clock or SystemClock()
        self._account = load_service_account(secret.get_secret_value())
        self._tokens = AccessTokens(self._account, settings.fcm.token_url, self._clock)
        self._base_url = settings.fcm.base_url
        self._ding_ttl = settings.fcm.ding_ttl_seconds
        self._concurrency = settings.delivery_concurrency
        self._timeout = settings.provider_timeout_seconds or REQUEST_TIMEOUT
        self.capabilities = Capabilities(
            max_batch=500,
            needs_contact=True,
            max_attempts=settings.push_max_attempts,
            resend_when_ambiguous=True,  # collapse key + notification tag: a duplicate replaces
            circuit_breaker=True,  # one Firebase project behind every send
        )
        self._session: aiohttp.ClientSession | None = None
        self._limit: asyncio.Semaphore | None = None

    def validate_target(self, target: Any) -> Any:
        if not isinstance(target, str):
            raise InvalidTarget("target must be an FCM registration token string")
        if not 1 <= len(target) <= MAX_TOKEN_LENGTH:
            raise InvalidTarget(f"registration token must be 1..{MAX_TOKEN_LENGTH} characters")
        if any(c.isspace() for c in target) or not target.isprintable():
            raise InvalidTarget("registration token must not contain whitespace or control characters")
        return target

    def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._limit is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._session, self._limit

    async def _post(
        self, session: aiohttp.ClientSession, access_token: str, message: dict[str, Any]
    ) -> tuple[int, Any, float | None]:
        url, headers, body = build_request(self._base_url, self._account.project_id, access_token, message)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                payload = _json(await resp.read())
                return (
                    resp.status,
                    payload,
                    parse_retry_after(resp.headers.get("retry-after"), self._clock.time()),
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc) from None

    async def _deliver(self, session: aiohttp.ClientSession, item: Outgoing) -> str | None:
        """Send one message; returns FCM's message name or raises a ``ChannelError``."""
        message = build_message(self.validate_target(item.target), item.notice, self._ding_ttl)
        access_token = await self._tokens.get(session)
        status, payload, retry_after = await self._post(session, access_token, message)
        if status == 401 and fcm_error_code(payload) != "THIRD_PARTY_AUTH_ERROR":
            access_token = await self._tokens.get(session, stale=access_token)
            status, payload, retry_after = await self._post(session, access_token, message)
        if status == 200:
            name = payload.get("name") if isinstance(payload, dict) else None
            return name if isinstance(name, str) else None
        raise fcm_error(status, payload, retry_after)

    async def _send_one(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, item: Outgoing
    ) -> Result:
        async with limit:
            try:
                name = await self._deliver(session, item)
            except ChannelError as exc:
                return Result.from_error(item.delivery_id, exc)
        return Result(item.delivery_id, Outcome.SENT, provider_ref=name)

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        if not batch:
            return []
        session, limit = self._ensure_session()
        return list(await asyncio.gather(*(self._send_one(session, limit, item) for item in batch)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
