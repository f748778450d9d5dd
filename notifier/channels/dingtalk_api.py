"""DingTalk's new-style API (``api.dingtalk.com/v1.0``): its access token and one call helper,
shared by the DingTalk channels that use it (DINGs, robot messages) and the organisation import.

The token comes from ``POST /v1.0/oauth2/accessToken {appKey, appSecret}`` ->
``{accessToken, expireIn}``, is cached, refreshed a few minutes before it expires, and refetched
once when a call answers that it is invalid. Calls carry it in ``x-acs-dingtalk-access-token``.

Error mapping (new-style APIs answer errors with an HTTP status and ``{code, message}``):

    401, or code InvalidAuthentication  -> refetch the token once, then PermanentError
    403 QpsLimitForAppkeyAndApi, 429 systemBusy, 5xx, unreadable answer
                                        -> TransientError, retry after THROTTLE_WAIT
    other 4xx                           -> PermanentError with DingTalk's code and message
    connection dropped after sending    -> AmbiguousError (the channel decides if a resend is safe)
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp

from notifier.channels.base import ChannelError, PermanentError, TransientError, provider_text
from notifier.channels.http import transport_error
from notifier.clock import Clock, SystemClock
from notifier.settings import DingTalkSettings

USER_ID = re.compile(r"[A-Za-z0-9_\-.@$]{1,64}")  # a DingTalk userid, as every DingTalk channel takes it
TOKEN_PATH = "/v1.0/oauth2/accessToken"  # noqa: S105 - a path, not a secret
TOKEN_REFRESH_MARGIN = 300.0
THROTTLE_WAIT = 60.0
REQUEST_TIMEOUT = 10.0
PARALLEL_CALLS = 4
THROTTLE_CODES = {"QpsLimitForAppkeyAndApi", "QpsLimitForApi", "QpsLimitForAppkey", "systemBusy"}
TOKEN_CODES = {"InvalidAuthentication", "Forbidden.AccessDenied.AccessTokenInvalid"}


class TokenRejected(PermanentError):
    """DingTalk says our new-style token is invalid or expired."""


def api_error(status: int, payload: Any) -> ChannelError:
    """Map one failed new-style call to the channel error tree (pure)."""
    code = str(payload.get("code") or "") if isinstance(payload, dict) else ""
    message = str(payload.get("message") or "") if isinstance(payload, dict) else ""
    label = provider_text(f"DingTalk HTTP {status} {code[:64]}: {message[:200]}") or ""
    if status == 401 or code in TOKEN_CODES:
        return TokenRejected(label)
    if status in (403, 429) and (code in THROTTLE_CODES or status == 429) or status >= 500:
        return TransientError(f"throttled or busy: {label}", THROTTLE_WAIT)
    return PermanentError(label)


class DingTalkApi:
    """A session, the cached token and ``call`` for one internal app."""

    def __init__(self, config: DingTalkSettings, clock: Clock | None = None) -> None:
        if not config.app_key or config.app_secret is None:
            raise ValueError("dingtalk.app_key and dingtalk.app_secret must be set")
        self._app_key = config.app_key
        self._app_secret = config.app_secret.get_secret_value()
        self._base_url = config.api_url.rstrip("/")
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._limit: asyncio.Semaphore | None = None
        self._lock: asyncio.Lock | None = None
        self._token: tuple[str, float] | None = None  # token, refresh after (clock time)

    def _ensure(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore, asyncio.Lock]:
        if self._session is None or self._limit is None or self._lock is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=PARALLEL_CALLS),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            )
            self._limit = asyncio.Semaphore(PARALLEL_CALLS)
            self._lock = asyncio.Lock()
        return self._session, self._limit, self._lock

    @staticmethod
    async def _read(response: aiohttp.ClientResponse) -> Any:
        raw = await response.read()
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    async def access_token(self, stale: str | None = None) -> str:
        session, _, lock = self._ensure()
        async with lock:
            now = self._clock.time()
            if self._token is not None and self._token[0] != stale and self._token[1] > now:
                return self._token[0]
            body = {"appKey": self._app_key, "appSecret": self._app_secret}
            try:
                async with session.post(f"{self._base_url}{TOKEN_PATH}", json=body) as resp:
                    status, payload = resp.status, await self._read(resp)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TransientError(str(transport_error(exc))) from None
            token = payload.get("accessToken") if isinstance(payload, dict) else None
            if status != 200 or not isinstance(token, str) or not token:
                error = api_error(status, payload) if payload is not None else TransientError("busy")
                if isinstance(error, TransientError):
                    raise error
                raise PermanentError(f"DingTalk token refused: {error}")
            expires = payload.get("expireIn")
            lifetime = float(expires) if isinstance(expires, int | float) else 7200.0
            self._token = (token, now + max(lifetime - TOKEN_REFRESH_MARGIN, lifetime / 2))
            return token

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One new-style call with the token (refetched once if rejected); the JSON answer, or
        the mapped ``ChannelError``."""
        session, limit, _ = self._ensure()
        data = None if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        stale: str | None = None
        for _attempt in range(2):
            token = await self.access_token(stale)
            headers = {"x-acs-dingtalk-access-token": token, "content-type": "application/json"}
            async with limit:
                try:
                    async with session.request(
                        method, f"{self._base_url}{path}", data=data, headers=headers, allow_redirects=False
                    ) as resp:
                        status, payload = resp.status, await self._read(resp)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise transport_error(exc) from None
            if 200 <= status < 300 and isinstance(payload, dict):
                return payload
            if payload is None:
                raise TransientError(f"DingTalk HTTP {status}: not a JSON answer", THROTTLE_WAIT)
            error = api_error(status, payload)
            if not isinstance(error, TokenRejected) or stale is not None:
                raise error
            stale = token
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
