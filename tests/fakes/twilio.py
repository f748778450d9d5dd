"""A fake Twilio REST API: ``Messages.json`` and ``Calls.json`` under ``/2010-04-01/Accounts/{sid}``.

It checks HTTP basic auth exactly as Twilio does (account sid + auth token; the sid in the path must
be the authenticated account) and answers anything else with Twilio's 401 error JSON (code 20003),
counted in ``rejected``. Every accepted message or call is recorded in ``messages``.

``responses[to]`` scripts answers per destination number, consumed in turn:
``"drop"`` closes the connection after reading the request (an ambiguous send), an HTTP status
(``429``, ``500``, ``503`` …) answers that status with Twilio's error shape, and a Twilio error
code (``21211``, ``21614``, ``20429`` …) answers 400 (429 for 20429) with that code.

``signed_callback(url, params)`` builds a status / gather callback exactly as Twilio signs it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from tests.fakes.server import serve_local

ACCOUNT_SID = "AC5ef8732a3c49700934481addd5ce1659"
AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
SMS_FROM = "+15005550006"
VOICE_FROM = "+15005550007"
PUBLIC_URL = "https://notifier.example.org"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")


@dataclass
class Accepted:
    kind: str  # "sms" | "call"
    sid: str
    to: str
    params: dict[str, str]


@dataclass
class FakeTwilio:
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    messages: list[Accepted] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    rejected: int = 0
    responses: dict[str, list[int | str]] = field(default_factory=lambda: defaultdict(list))
    retry_after: str | None = None  # Retry-After header on scripted 429s and 503s
    # awaited after a message is accepted, before it is answered (a test's fault injection)
    on_accept: Callable[[Accepted], Awaitable[None]] | None = None
    _runner: web.AppRunner | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sms(self) -> list[Accepted]:
        return [m for m in self.messages if m.kind == "sms"]

    @property
    def calls(self) -> list[Accepted]:
        return [m for m in self.messages if m.kind == "call"]

    def settings_overrides(self) -> dict[str, Any]:
        return {
            "sms_provider": "twilio",
            "voice_provider": "twilio",
            "public_url": PUBLIC_URL,
            "twilio": {
                "account_sid": self.account_sid,
                "auth_token": self.auth_token,
                "sms_from": SMS_FROM,
                "voice_from": VOICE_FROM,
                "base_url": self.base_url,
            },
        }

    def good_target(self) -> str:
        return "+14155550123"

    # --- what Twilio sends us ---------------------------------------------------------------------

    def signature(self, url: str, params: dict[str, str]) -> str:
        data = url + "".join(k + v for k, v in sorted(params.items()))
        return base64.b64encode(
            hmac.new(self.auth_token.encode(), data.encode(), hashlib.sha1).digest()
        ).decode()

    def signed_callback(self, url: str, params: dict[str, str]) -> tuple[dict[str, str], bytes]:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": self.signature(url, params),
            "User-Agent": "TwilioProxy/1.1",
        }
        return headers, urlencode(params).encode()

    # --- the API ----------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Basic {expected}".encode()) and (
            request.match_info["sid"] == self.account_sid
        )

    @staticmethod
    def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return web.json_response(body, status=status, headers=headers)

    def _scripted(self, request: web.Request, to: str, form: dict[str, str]) -> web.Response | None:
        script = self.responses.get(to)
        if not script:
            return None
        answer = script.pop(0)
        if answer == "drop":
            self.dropped.append(form)
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # the handler ends without a response
        assert isinstance(answer, int)
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        if answer == 20429 or answer == 429:
            return self._error(429, 20429, "Too Many Requests", headers)
        if answer >= 10000:
            return self._error(400, answer, f"The 'To' number {to} is not valid (error {answer}).")
        if answer == 401:
            return self._error(401, 20003, "Authenticate")
        if answer == 404:
            return self._error(404, 20404, "The requested resource was not found")
        if answer == 503:
            return self._error(503, 20503, "Service Unavailable", headers)
        return self._error(answer, 20500, "Internal Server Error")

    async def _create(self, request: web.Request, kind: str) -> web.Response:
        if not self._authorised(request):
            self.rejected += 1
            return self._error(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        to = form.get("To", "")
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return self._error(400, 21603, "A 'From' phone number is required.")
        if kind == "sms" and not form.get("Body"):
            return self._error(400, 21602, "Message body is required.")
        if kind == "call" and not (form.get("Twiml") or form.get("Url")):
            return self._error(400, 21205, "Url parameter is required.")
        if not E164.fullmatch(to):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        scripted = self._scripted(request, to, form)
        if scripted is not None:
            return scripted
        sid = ("SM" if kind == "sms" else "CA") + f"{next(self._ids):032x}"
        self.messages.append(Accepted(kind, sid, to, form))
        if self.on_accept is not None:
            await self.on_accept(self.messages[-1])
        return web.json_response(
            {"sid": sid, "account_sid": self.account_sid, "to": to, "status": "queued"}, status=201
        )

    async def _messages(self, request: web.Request) -> web.Response:
        return await self._create(request, "sms")

    async def _calls(self, request: web.Request) -> web.Response:
        return await self._create(request, "call")

    async def start(self) -> FakeTwilio:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._messages)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", self._calls)
        self._runner, self.port = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
