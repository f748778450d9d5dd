"""A fake JPush Push API v3 (``POST /v3/push``) on 127.0.0.1.

It checks HTTP basic auth exactly (``base64(app_key:master_secret)``; 401 / code 1004
otherwise), validates the push object, and records one message per registration id of each
accepted call. Like JPush, a call whose ids are all unknown answers 1011, while a call where
only some are unknown succeeds (the unknown ones are simply not delivered).

``responses`` scripts whole-call answers by registration id: a JPush error code (see ``CODES``)
or ``"drop"`` (accept, record, then close the connection before answering). The first id of a
call with a pending script decides that call's answer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import json
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from notifier.settings import JPushSettings
from tests.fakes.server import serve_local

CODES: dict[int, tuple[int, str]] = {
    1000: (500, "Server Internal error"),
    1002: (400, "Missing parameter"),
    1003: (400, "Parameter value is invalid"),
    1004: (401, "Authen failed"),
    1008: (400, "app_key is invalid"),
    1011: (400, "cannot find user by this audience"),
    1030: (503, "Internal service timeout"),
    2002: (429, "Request times of the app_key exceed the limit of current time window"),
}
PLATFORMS = {"android", "ios", "quickapp", "hmos"}
TOP_LEVEL = {"platform", "audience", "notification", "message", "options", "cid", "callback"}


class BadPush(ValueError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _check_push(push: Any) -> list[str]:
    """What JPush rejects; returns the registration ids."""
    if not isinstance(push, dict) or not {"platform", "audience"} <= set(push):
        raise BadPush(1002, "Missing parameter: platform / audience")
    if set(push) - TOP_LEVEL:
        raise BadPush(1003, f"Unsupported key {sorted(set(push) - TOP_LEVEL)[0]!r}")
    platform = push["platform"]
    if platform != "all" and not (isinstance(platform, list) and platform and set(platform) <= PLATFORMS):
        raise BadPush(1003, "platform must be 'all' or a list of platforms")
    audience = push["audience"]
    ids = audience.get("registration_id") if isinstance(audience, dict) else None
    if not isinstance(ids, list) or not 1 <= len(ids) <= 1000 or not all(isinstance(i, str) for i in ids):
        raise BadPush(1003, "audience.registration_id must hold 1..1000 strings")
    note = push.get("notification")
    if not isinstance(note, dict) or not note:
        raise BadPush(1002, "Missing parameter: notification or message")
    android, ios = note.get("android", {}), note.get("ios", {})
    if not isinstance(android, dict) or not isinstance(android.get("alert", note.get("alert")), str):
        raise BadPush(1003, "notification.android.alert must be a string")
    if android.get("priority", 0) not in (-2, -1, 0, 1, 2):
        raise BadPush(1003, "notification.android.priority must be -2..2")
    if not isinstance(ios, dict) or not isinstance(ios.get("alert", note.get("alert")), str | dict):
        raise BadPush(1003, "notification.ios.alert must be a string or an object")
    for extras in (android.get("extras", {}), ios.get("extras", {})):
        if not isinstance(extras, dict):
            raise BadPush(1003, "extras must be an object")
    options = push.get("options", {})
    ttl = options.get("time_to_live", 86400) if isinstance(options, dict) else None
    if not isinstance(ttl, int) or not 0 <= ttl <= 864000:
        raise BadPush(1003, "options.time_to_live must be 0..864000 seconds")
    if not isinstance(options.get("apns_production", False), bool):
        raise BadPush(1003, "options.apns_production must be a boolean")
    if len(str(options.get("apns_collapse_id", "")).encode()) > 64:
        raise BadPush(1003, "options.apns_collapse_id must be at most 64 bytes")
    return ids


def error(code: int, msg_id: str | None = None) -> web.Response:
    status, message = CODES[code]
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if msg_id is not None:
        body["msg_id"] = msg_id
    return web.json_response(body, status=status)


@dataclass
class JPushMessage:
    registration_id: str
    push: dict[str, Any]
    msg_id: str


@dataclass
class FakeJPush:
    app_key: str = field(default_factory=lambda: secrets.token_hex(12))
    master_secret: str = field(default_factory=lambda: secrets.token_hex(12))
    messages: list[JPushMessage] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)  # the ids of every authorised call
    rejected: int = 0  # calls refused for auth or a malformed push object
    unknown_ids: set[str] = field(default_factory=set)
    responses: dict[str, list[int | str]] = field(default_factory=lambda: defaultdict(list))
    rate_limit_reset: int = 42  # X-Rate-Limit-Reset: seconds left in the current window
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(18100000000000001))
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings_overrides(self, master_secret: str | None = None) -> dict[str, Any]:
        secret = SecretStr(master_secret or self.master_secret)
        return {"jpush": JPushSettings(app_key=self.app_key, master_secret=secret, base_url=self.base_url)}

    def good_target(self) -> str:
        return secrets.token_hex(10)[:19]

    def _authorised(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme != "Basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        app_key, _, secret = decoded.partition(":")
        return hmac.compare_digest(app_key.encode(), self.app_key.encode()) and hmac.compare_digest(
            secret.encode(), self.master_secret.encode()
        )

    def _rate_headers(self, response: web.Response) -> web.Response:
        response.headers["X-Rate-Limit-Limit"] = "600"
        response.headers["X-Rate-Limit-Remaining"] = "599"
        response.headers["X-Rate-Limit-Reset"] = str(self.rate_limit_reset)
        return response

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not self._authorised(request.headers.get("authorization", "")):
            self.rejected += 1
            return error(1004)
        try:
            if request.content_type != "application/json":
                raise BadPush(1003, "Content-Type must be application/json")
            push = json.loads(raw)
            ids = _check_push(push)
        except ValueError as exc:
            self.rejected += 1
            code = exc.code if isinstance(exc, BadPush) else 1003
            body = {"error": {"code": code, "message": str(exc) or CODES[1003][1]}}
            return self._rate_headers(web.json_response(body, status=400))
        self.calls.append(ids)
        answer = next((self.responses[i].pop(0) for i in ids if self.responses.get(i)), None)
        if isinstance(answer, int):
            return self._rate_headers(error(answer))
        msg_id = str(next(self._ids))
        known = [i for i in dict.fromkeys(ids) if i not in self.unknown_ids]
        if not known:
            return self._rate_headers(error(1011, msg_id))
        self.messages.extend(JPushMessage(i, push, msg_id) for i in known)
        if answer == "drop":
            assert request.transport is not None
            request.transport.close()
        return self._rate_headers(web.json_response({"sendno": "0", "msg_id": msg_id}))

    def per_id(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for m in self.messages:
            counts[m.registration_id] += 1
        return dict(counts)

    async def start(self) -> FakeJPush:
        app = web.Application()
        app.router.add_post("/v3/push", self.handle)
        self._runner, self.port = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
