"""JPush (极光推送) REST API v3: one ``POST /v3/push`` reaches up to 1000 registration ids.

Auth is HTTP basic, ``base64(app_key:master_secret)``. A call's answer applies to every item it
carried, so each item's ``Result`` gets the call's ``msg_id`` (or its error).

Error mapping (JPush answers ``{"error": {"code", "message"}}``):

    1011 cannot find user by this audience  -> InvalidTarget for every item of the call (JPush
                                              accepts a call where only some ids are unknown,
                                              so 1011 means none of them is known)
    401 / 1004 auth failed, 1003 / 1008 / other 4xx                  -> PermanentError
    429 / 2002 rate limited   -> TransientError, retry after ``X-Rate-Limit-Reset`` seconds
    5xx (1000 internal error, 1030 internal timeout)                 -> TransientError
    connection dropped after the request went out                    -> AmbiguousError

A resend is tolerable: ``apns_collapse_id`` makes iOS replace a duplicate; Android may show it
twice, which beats missing an urgent notice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

import aiohttp

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
from notifier.channels.http import transport_error
from notifier.clock import Clock
from notifier.settings import Settings

MAX_IDS_PER_CALL = 1000
REGISTRATION_ID = re.compile(r"[A-Za-z0-9]{1,64}")
TTL_SECONDS = 86400  # JPush's default offline retention
DING_TTL_SECONDS = 600  # an unreceived DING is escalated on other channels long before this
RATE_LIMIT_BACKOFF = 60.0  # JPush's rate-limit window is a minute
PARALLEL_CALLS = 8
REQUEST_TIMEOUT = 10.0


def authorization(app_key: str, master_secret: str) -> str:
    return "Basic " + base64.b64encode(f"{app_key}:{master_secret}".encode()).decode()


def build_push(registration_ids: list[str], notice: NoticeContent) -> dict[str, Any]:
    """The push object for one call (pure)."""
    extras = {"notice_id": notice.notice_id, "kind": notice.kind}
    return {
        "platform": "all",
        "audience": {"registration_id": registration_ids},
        "notification": {
            "alert": notice.title,
            "android": {
                "title": notice.title,
                "alert": notice.body,
                "priority": 2 if notice.urgent else 0,
                "extras": extras,
            },
            "ios": {
                "alert": {"title": notice.title, "body": notice.body},
                "sound": "default",
                "extras": extras,
            },
        },
        "options": {
            "time_to_live": DING_TTL_SECONDS if notice.urgent else TTL_SECONDS,
            "apns_production": True,
            "apns_collapse_id": notice.notice_id,
        },
    }


def build_request(
    base_url: str, app_key: str, master_secret: str, registration_ids: list[str], notice: NoticeContent
) -> tuple[str, dict[str, str], bytes]:
    headers = {
        "authorization": authorization(app_key, master_secret),
        "content-type": "application/json",
    }
    body = json.dumps(build_push(registration_ids, notice), ensure_ascii=False, separators=(",", ":"))
    return f"{base_url.rstrip('/')}/v3/push", headers, body.encode()


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def jpush_error(
    status: int, payload: Any, rate_limit_reset: float | None = None, retry_after: float | None = None
) -> ChannelError:
    """Map one failed call to the channel error tree (pure). ``rate_limit_reset`` is the
    ``X-Rate-Limit-Reset`` header (seconds until the window resets), ``retry_after`` Retry-After."""
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message") or "")[:200] if isinstance(error, dict) else ""
    label = f"JPush {status}" + (f" {code}" if code is not None else "") + (f": {message}" if message else "")
    if status == 401 or code == 1004:
        return PermanentError(label)
    if code == 1011:
        return InvalidTarget(label)
    if status == 429 or code == 2002:
        return TransientError(label, rate_limit_reset if rate_limit_reset is not None else RATE_LIMIT_BACKOFF)
    if status >= 500:
        return TransientError(label, retry_after)
    return PermanentError(label)


def plan_calls(batch: list[Outgoing]) -> list[tuple[NoticeContent, dict[str, list[Outgoing]]]]:
    """Group validated items into calls: one notice each, at most 1000 distinct ids each."""
    calls: list[tuple[NoticeContent, dict[str, list[Outgoing]]]] = []
    open_call: dict[NoticeContent, dict[str, list[Outgoing]]] = {}
    for item in batch:
        ids = open_call.get(item.notice)
        if ids is None or (item.target not in ids and len(ids) >= MAX_IDS_PER_CALL):
            ids = open_call[item.notice] = {}
            calls.append((item.notice, ids))
        ids.setdefault(item.target, []).append(item)
    return calls


class JPushChannel:
    id = "jpush"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        secret = settings.jpush.master_secret
        if not settings.jpush.app_key or secret is None:
            raise ValueError("jpush.app_key and jpush.master_secret must be set")
        del clock  # basic auth needs no time; the parameter keeps the channel constructors uniform
        self._app_key = settings.jpush.app_key
        self._master_secret = secret.get_secret_value()
        self._base_url = settings.jpush.base_url
        self.capabilities = Capabilities(
            max_batch=MAX_IDS_PER_CALL,
            needs_contact=True,
            max_attempts=settings.push_max_attempts,
            resend_when_ambiguous=True,
            circuit_breaker=True,  # one JPush app behind every call
        )
        self._session: aiohttp.ClientSession | None = None
        self._limit: asyncio.Semaphore | None = None

    def validate_target(self, target: Any) -> Any:
        if not isinstance(target, str) or not REGISTRATION_ID.fullmatch(target):
            raise InvalidTarget("target must be a JPush registration id: 1..64 letters and digits")
        return target

    def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._limit is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=PARALLEL_CALLS),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            )
            self._limit = asyncio.Semaphore(PARALLEL_CALLS)
        return self._session, self._limit

    async def _call(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, notice: NoticeContent, ids: list[str]
    ) -> str | None | ChannelError:
        """One push call: JPush's msg_id, or the error that applies to every id in it."""
        url, headers, body = build_request(self._base_url, self._app_key, self._master_secret, ids, notice)
        async with limit:
            try:
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    raw = await resp.read()
                    status = resp.status
                    reset = _seconds(resp.headers.get("x-rate-limit-reset"))
                    retry_after = _seconds(resp.headers.get("retry-after"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                return transport_error(exc)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status == 200:
            msg_id = payload.get("msg_id") if isinstance(payload, dict) else None
            return str(msg_id) if msg_id is not None else None
        return jpush_error(status, payload, reset, retry_after)

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        results: list[Result] = []
        valid: list[Outgoing] = []
        for item in batch:
            try:
                self.validate_target(item.target)
            except InvalidTarget as exc:
                results.append(Result.from_error(item.delivery_id, exc))
            else:
                valid.append(item)
        if not valid:
            return results
        session, limit = self._ensure_session()
        calls = plan_calls(valid)
        answers = await asyncio.gather(*(self._call(session, limit, n, list(ids)) for n, ids in calls))
        for (_, ids), answer in zip(calls, answers, strict=True):
            for items in ids.values():
                for item in items:
                    if isinstance(answer, ChannelError):
                        results.append(Result.from_error(item.delivery_id, answer))
                    else:
                        results.append(Result(item.delivery_id, Outcome.SENT, provider_ref=answer))
        return results

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
