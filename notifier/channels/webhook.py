"""Signed webhooks (Standard Webhooks): POST JSON to the member's URL.

Headers ``webhook-id`` (stable across retries, so receivers can dedupe), ``webhook-timestamp``
and ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")), one
such signature per secret, space-separated, while a secret rotation lasts (settings ``*_previous``).
2xx is delivered; 408/429/5xx, timeouts and connection errors are retried; other statuses fail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

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
from notifier.channels.netguard import BlockedAddress, check_literal
from notifier.channels.posthttp import PostClient, ProtocolError, ServerDisconnectedError
from notifier.channels.urls import parse_target_url
from notifier.clock import Clock, SystemClock
from notifier.settings import Settings

MAX_RESPONSE_BYTES = 64 * 1024


def decode_secret(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidTarget("secret must be 'whsec_' followed by base64", field="target.secret") from None
    if not 16 <= len(key) <= 64:
        raise InvalidTarget("secret must decode to 16..64 bytes", field="target.secret")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)  # the body as sent, never re-serialised (and not copied)
    return "v1," + base64.b64encode(mac.digest()).decode()


# A string of these characters is its own JSON string body (nothing to escape): member ids,
# almost always, which are encoded once per request.
_PLAIN = re.compile(r"[A-Za-z0-9 _.:@+/=-]*")


def _json(value: str) -> bytes:
    if _PLAIN.fullmatch(value):
        return b'"' + value.encode() + b'"'
    return json.dumps(value, ensure_ascii=False).encode()


@functools.lru_cache(maxsize=4096)
def _blocked_literal(url: str, allow_private: bool) -> str | None:
    """Why ``url``'s host may not be reached when it is an IP literal (None: it may, or it is a
    name, checked after resolution); remembered per URL -- a batch mostly repeats a few."""
    try:
        check_literal(urlsplit(url).hostname or "", allow_private)
    except BlockedAddress as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=64)
def _notice_parts(notice: NoticeContent) -> tuple[bytes, bytes]:
    """The body around the member id, serialised once per notice (a batch of 500 shares it)."""
    head = b'{"notice_id":' + _json(notice.notice_id) + b',"member_id":'
    tail = (
        b',"kind":'
        + _json(notice.kind)
        + b',"title":'
        + _json(notice.title)
        + b',"body":'
        + _json(notice.body)
        + b"}"
    )
    return head, tail


def build_body(item: Outgoing) -> bytes:
    """``{"notice_id", "member_id", "kind", "title", "body"}`` as compact JSON (pure)."""
    head, tail = _notice_parts(item.notice)
    return head + _json(item.member_id) + tail


def build_request(
    item: Outgoing, default_key: bytes | Sequence[bytes], now: int
) -> tuple[str, dict[str, str], bytes]:
    """The URL, headers and body for one delivery (pure: no I/O). ``default_key`` may be several
    keys (a rotation: the current, then the previous): the message is signed under each."""
    target = item.target
    if target.get("secret"):
        keys = [decode_secret(target["secret"])]
    else:
        keys = [default_key] if isinstance(default_key, bytes) else list(default_key)
    body = build_body(item)
    msg_id = f"msg_{item.delivery_id}"
    headers = {
        "content-type": "application/json",
        "user-agent": "notifier-webhook/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": " ".join(sign(key, msg_id, now, body) for key in keys),
    }
    return target["url"], headers, body


class WebhookChannel:
    id = "webhook"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self.capabilities = Capabilities(max_batch=500, max_attempts=settings.webhook_max_attempts)
        self._allow_private = settings.allow_private_targets
        self._timeout = settings.webhook_timeout_seconds
        self._concurrency = settings.delivery_concurrency
        self._default_key = [decode_secret(s) for s in settings.webhook_secrets()]
        self._client: PostClient | None = None
        self._limit: asyncio.Semaphore | None = None

    def validate_target(self, target: Any) -> Any:
        if isinstance(target, str):
            target = {"url": target}
        if not isinstance(target, dict):
            raise InvalidTarget("target must be a URL string or an object with 'url' (and optional 'secret')")
        unknown = set(target) - {"url", "secret"}
        if unknown:
            raise InvalidTarget(f"unknown field {sorted(unknown)[0]!r}", field=f"target.{sorted(unknown)[0]}")
        url = target.get("url")
        parse_target_url(url, "target.url", allow_private=self._allow_private)
        assert isinstance(url, str)
        normalised: dict[str, str] = {"url": url}
        secret = target.get("secret")
        if secret is not None:
            if not isinstance(secret, str):
                raise InvalidTarget("secret must be a string", field="target.secret")
            decode_secret(secret)
            normalised["secret"] = secret
        return normalised

    def _ensure_client(self) -> tuple[PostClient, asyncio.Semaphore]:
        if self._client is None or self._limit is None:
            self._client = PostClient(self._allow_private, MAX_RESPONSE_BYTES)
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._client, self._limit

    async def _send_one(self, item: Outgoing, now: int) -> Result:
        client, limit = self._ensure_client()
        try:
            url, headers, body = build_request(item, self._default_key, now)
            blocked = _blocked_literal(url, self._allow_private)
        except ChannelError as exc:
            return Result.from_error(item.delivery_id, exc)
        except ValueError:  # a stored URL that no longer parses: that contact is unusable
            return Result.from_error(item.delivery_id, InvalidTarget("url is not a valid URL"))
        if blocked is not None:
            return Result(item.delivery_id, Outcome.FAILED, error=blocked)
        async with limit:
            try:
                async with asyncio.timeout(self._timeout):
                    answer = await client.post(url, headers, body)
            except BlockedAddress as exc:
                return Result(item.delivery_id, Outcome.FAILED, error=str(exc))
            except ValueError:
                return Result.from_error(item.delivery_id, InvalidTarget("url is not a valid URL"))
            except (TimeoutError, ServerDisconnectedError, ProtocolError) as exc:
                return Result.from_error(item.delivery_id, TransientError(f"{type(exc).__name__}"))
            except OSError as exc:  # connecting: refused, unreachable, TLS
                reason = exc.strerror or type(exc).__name__
                return Result.from_error(item.delivery_id, TransientError(f"connect failed: {reason}"))
        status = answer.status
        retry_after = parse_retry_after(answer.retry_after, self._clock.time())
        if 200 <= status < 300:
            return Result(item.delivery_id, Outcome.DELIVERED)
        if status in (408, 425, 429) or status >= 500:
            return Result.from_error(item.delivery_id, TransientError(f"HTTP {status}", retry_after))
        if status == 410:  # the receiver says this endpoint is gone for good: stop using it
            return Result.from_error(item.delivery_id, InvalidTarget("HTTP 410: endpoint gone"))
        return Result.from_error(item.delivery_id, PermanentError(f"HTTP {status}"))

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        now = int(self._clock.time())
        return list(await asyncio.gather(*(self._send_one(item, now) for item in batch)))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
