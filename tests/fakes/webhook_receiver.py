"""A webhook receiver that verifies Standard Webhooks signatures and counts deliveries.

``responses`` lets a test script the answers per member (e.g. 503 twice, then 200): a status
code (headers from ``headers_for[status]``), or a ``Reply`` with its own headers and body. A 2xx
answer accepts the message (it is recorded in ``messages``). Every signed request is counted per
member in ``requests``; unsigned or badly signed ones are counted in ``rejected`` and answered 401.
``on_request`` (async, given the payload) runs before each answer: a test's hook into the moment
a request is in flight. ``basic`` (user, password): requests must carry them as HTTP Basic
authorization; the others are counted in ``unauthorised`` and answered 401.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.server import serve_local


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    path: str


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class WebhookReceiver:
    secret: str
    tolerance_seconds: int = 300
    messages: list[Received] = field(default_factory=list)
    rejected: int = 0
    # member_id -> list of statuses to answer in turn (then 200)
    responses: dict[str, list[int | Reply]] = field(default_factory=lambda: defaultdict(list))
    headers_for: dict[int, dict[str, str]] = field(default_factory=dict)
    delay: float = 0.0  # seconds to hold each request, to make in-flight work observable
    requests: Counter[str] = field(default_factory=Counter)  # member -> signed requests received
    on_request: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    basic: tuple[str, str] | None = None
    unauthorised: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def key(self) -> bytes:
        return base64.b64decode(self.secret.removeprefix("whsec_"))

    def verify(self, msg_id: str, timestamp: str, signature: str, body: bytes) -> bool:
        try:
            ts = int(timestamp)
        except ValueError:
            return False
        if abs(time.time() - ts) > self.tolerance_seconds:
            return False
        expected = base64.b64encode(
            hmac.new(self.key(), f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        ).decode()
        return any(
            part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
            for part in signature.split(" ")
        )

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.basic is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic).encode()).decode()
            if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
                self.unauthorised += 1
                return web.Response(status=401)
        if self.delay:
            await asyncio.sleep(self.delay)
        msg_id = request.headers.get("webhook-id", "")
        ok = self.verify(
            msg_id,
            request.headers.get("webhook-timestamp", ""),
            request.headers.get("webhook-signature", ""),
            body,
        )
        if not ok:
            self.rejected += 1
            return web.Response(status=401)
        payload = json.loads(body)
        self.requests[payload["member_id"]] += 1
        if self.on_request is not None:
            await self.on_request(payload)
        script = self.responses.get(payload["member_id"])
        reply = Reply(204)
        if script:
            answer = script.pop(0)
            reply = answer if isinstance(answer, Reply) else Reply(answer, self.headers_for.get(answer, {}))
            if reply.status == 200 and not isinstance(answer, Reply):
                reply = Reply(204)
        if 200 <= reply.status < 300:
            self.messages.append(
                Received(msg_id, int(request.headers["webhook-timestamp"]), payload, request.path)
            )
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    def per_member(self) -> Counter[str]:
        return Counter(m.body["member_id"] for m in self.messages)

    def distinct_ids(self) -> set[str]:
        return {m.webhook_id for m in self.messages}

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner, self.port = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
