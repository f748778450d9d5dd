"""DingTalk group chat custom robots (自定义机器人): "post this notice in the branch group".

The target is a unit-level contact (``PUT /v1/units/{id}/contacts``): the robot's webhook URL
(``https://oapi.dingtalk.com/robot/send?access_token=...``) and its signing secret (``SEC...``),
stored as ``{"access_token", "secret"}``. A post is one ``POST /robot/send?access_token=&timestamp=
&sign=`` with ``sign`` = base64 of HMAC-SHA256(key = secret, message = f"{timestamp_ms}\\n{secret}")
(URL-encoded as a query parameter); the message is markdown (title and body, and the sender's
keywords if the robot requires some: put them in the title). One post per unit, never per member:
the worker (``notifier.workers.unit_posts``) keeps each robot within 20 posts a minute.

Error mapping (DingTalk answers HTTP 200 with ``{errcode, errmsg}``):

    410100 / 130101 too many posts (the robot is muted for 10 minutes)
                                  -> TransientError, retry after ROBOT_BAN_WAIT
    310000 security check failed: keyword missing, bad signature, IP not allowed (errmsg says which)
                                  -> InvalidTarget with the reason (the contact is disabled until
                                     it is set again: it fails every time until someone fixes it)
    300001 / 400102 / 300005 token missing, robot disabled or removed -> InvalidTarget
    other errcodes                -> PermanentError; 5xx, 429, unreadable -> TransientError
    connection dropped after sending -> AmbiguousError, not resent (recorded failed as ambiguous)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
    provider_text,
)
from notifier.channels.http import transport_error
from notifier.clock import Clock, SystemClock
from notifier.settings import Settings

SEND_PATH = "/robot/send"
ROBOT_BAN_WAIT = 600.0  # DingTalk mutes a robot for 10 minutes past its limit
MAX_TEXT_CHARS = 4000
REQUEST_TIMEOUT = 10.0
PARALLEL_POSTS = 4
TOKEN = re.compile(r"[A-Za-z0-9_\-]{16,128}")
SECRET = re.compile(r"SEC[A-Za-z0-9_\-]{16,128}")
THROTTLED = {410100, 130101}
SECURITY = {310000}
GONE = {300001, 300005, 400102}


def sign(secret: str, timestamp_ms: int) -> str:
    """The ``sign`` parameter (before URL encoding): base64 HMAC-SHA256 over "ts\\nsecret"."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def build_message(notice: NoticeContent) -> dict[str, Any]:
    """The markdown post (pure)."""
    title = ("【DING】" if notice.urgent else "") + notice.title
    text = f"### {title}\n\n{notice.body}"
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 1] + "…"
    return {"msgtype": "markdown", "markdown": {"title": title[:100], "text": text}}


def robot_error(errcode: int, errmsg: str) -> ChannelError:
    label = provider_text(f"DingTalk robot {errcode}: {errmsg[:200]}") or ""
    if errcode in THROTTLED:
        return TransientError(f"throttled (the robot's 20 posts a minute): {label}", ROBOT_BAN_WAIT)
    if errcode in SECURITY:
        return InvalidTarget(
            f"the robot's security settings refused the post (keyword, signature or IP): {label}"
        )
    if errcode in GONE:
        return InvalidTarget(f"the robot is gone or disabled: {label}")
    return PermanentError(label)


class DingTalkRobotChannel:
    id = "dingtalk_robot"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self._base_url = settings.dingtalk.oapi_url.rstrip("/")
        self._host = urlsplit(self._base_url).netloc
        self._clock = clock or SystemClock()
        self.per_minute = settings.dingtalk.group_robot_per_minute
        self.capabilities = Capabilities(
            max_batch=50,
            needs_contact=True,
            unit_level=True,
            max_attempts=settings.push_max_attempts,
            resend_when_ambiguous=False,  # a second post in the group is not harmless
        )
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(PARALLEL_POSTS)

    def validate_target(self, target: Any) -> Any:
        """``{"webhook": "<the robot's URL>", "secret": "SEC..."}`` (or ``access_token`` for the URL)."""
        if not isinstance(target, dict) or set(target) - {"webhook", "access_token", "secret"}:
            raise InvalidTarget("target must be {webhook, secret}: the group robot's URL and signing secret")
        token = target.get("access_token")
        if "webhook" in target:
            url = target["webhook"]
            parts = urlsplit(url) if isinstance(url, str) and len(url) < 1024 else None
            if parts is None or parts.netloc != self._host or parts.path != SEND_PATH:
                raise InvalidTarget(
                    f"must be the robot's URL: {self._base_url}{SEND_PATH}?access_token=…", "target.webhook"
                )
            tokens = parse_qs(parts.query).get("access_token") or []
            token = tokens[0] if len(tokens) == 1 else None
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            raise InvalidTarget("the robot's access_token is missing or malformed", "target.webhook")
        secret = target.get("secret")
        if not isinstance(secret, str) or not SECRET.fullmatch(secret):
            raise InvalidTarget("the robot's signing secret (加签), starting SEC", "target.secret")
        return {"access_token": token, "secret": secret}

    def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        return self._session

    async def _post(self, item: Outgoing) -> Result:
        try:
            target = self.validate_target(item.target)
        except InvalidTarget as exc:
            return Result.from_error(item.delivery_id, exc)
        timestamp = int(self._clock.time() * 1000)
        query = {
            "access_token": target["access_token"],
            "timestamp": str(timestamp),
            "sign": sign(target["secret"], timestamp),
        }
        body = json.dumps(build_message(item.notice), ensure_ascii=False).encode()
        async with self._limit:
            try:
                async with self._ensure().post(
                    f"{self._base_url}{SEND_PATH}",
                    params=query,
                    data=body,
                    headers={"content-type": "application/json"},
                    allow_redirects=False,
                ) as resp:
                    status, raw = resp.status, await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                return Result.from_error(item.delivery_id, transport_error(exc))
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return Result.from_error(
                item.delivery_id, TransientError(f"DingTalk robot HTTP {status}: not JSON")
            )
        code = payload.get("errcode", -1)
        code = code if isinstance(code, int) else -1
        if status == 200 and code == 0:
            return Result(item.delivery_id, Outcome.SENT)
        if status >= 500 or status == 429:
            return Result.from_error(item.delivery_id, TransientError(f"DingTalk robot HTTP {status}"))
        return Result.from_error(item.delivery_id, robot_error(code, str(payload.get("errmsg") or "")))

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        return list(await asyncio.gather(*(self._post(item) for item in batch)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def configured(settings: Settings) -> bool:
    return settings.dingtalk.group_robots
