"""The member's pages (``/m/``): the inbox, one notice, the read confirmation, web push.

A read is recorded only by a POST: the "已读 / I have read this" button a DING asks for, or --
for other kinds -- a beacon the page's script sends once the notice has been visible for a
moment. A GET never records one, so a link-preview fetch or a prefetch cannot. A member arrives
by a console link, or by a notice's signed read link opened at ``/m/r/<token>``: its first use
(recorded in PostgreSQL) signs the browser in; a replay does not.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from importlib import resources

from aiohttp import web

from notifier.api import audit
from notifier.api import receipts as receipts_api
from notifier.api import webpush as webpush_api
from notifier.api.keys import DEPS
from notifier.api.principal import Principal
from notifier.api.problems import Problem, not_found
from notifier.api.types import parse_uuid
from notifier.channels.base import InvalidTarget
from notifier.console import points
from notifier.console.apicall import as_principal, call
from notifier.console.pages import error_page, page, render, t
from notifier.console.session import Session, set_cookie, start
from notifier.console.signin import _pre_ok, _pre_token, _with_pre_cookie
from notifier.db import console, contacts, exams, notices, recipients
from notifier.links import BadLink, read_token

INBOX_SIZE = 50


def member_principal(session: Session) -> Principal:
    assert session.member_id is not None
    return Principal(None, "member", None, session.member_id)


@page(console_roles=False, member=True)
async def inbox(request: web.Request, session: Session) -> web.Response:
    p = member_principal(session)
    query = receipts_api.InboxQuery(limit=INBOX_SIZE, cursor=request.query.get("cursor") or None)
    data = await call(request, p, receipts_api.inbox, query=query, match={"member_id": p.member_id or ""})
    mine = await points.my_points(request, session)
    return render(
        request, "inbox.html", {"items": data["items"], "next_cursor": data["next_cursor"], "my_points": mine}
    )


async def _addressed(request: web.Request, member_id: str, notice_id: str) -> tuple[dict[str, object], bool]:
    nid = parse_uuid(notice_id)
    async with request.app[DEPS].pool.acquire() as conn:
        notice = None if nid is None else await notices.get(conn, nid)
        row = None if notice is None else await recipients.get(conn, str(notice["id"]), member_id)
    if notice is None or row is None:
        raise not_found("notice")
    return dict(notice), row["read_at"] is not None


@page(console_roles=False, member=True)
async def show(request: web.Request, session: Session) -> web.Response:
    assert session.member_id is not None
    notice, read = await _addressed(request, session.member_id, request.match_info["notice_id"])
    lesson = await points.lesson_state(request, session.member_id, notice)
    async with request.app[DEPS].pool.acquire() as conn:  # a quiz or test it carries (study pages)
        quiz = await exams.quiz_of_notice(conn, str(notice["id"]))
    context = {"notice": notice, "read": read, "lesson_points": lesson, "quiz": quiz}
    return render(request, "member_notice.html", context)


@page(console_roles=False, member=True)
async def mark_read(request: web.Request, session: Session) -> web.StreamResponse:
    p = member_principal(session)
    body = receipts_api.ReceiptIn(type="read")
    out = await call(request, p, receipts_api.post_receipt, body=body)
    if request.headers.get("X-CSRF-Token"):  # the beacon
        return web.json_response({"read_at": out["read_at"]})
    raise web.HTTPSeeOther(f"/m/notices/{out['notice_id']}")


async def from_read_link(request: web.Request) -> web.Response:
    token = _pre_token(request)
    context = {"pre": token, "link": request.match_info["token"]}
    return _with_pre_cookie(request, render(request, "member_link.html", context), token)


async def use_read_link(request: web.Request) -> web.StreamResponse:
    if not await _pre_ok(request):
        return error_page(request, 403, t(request, "error.csrf"))
    deps = request.app[DEPS]
    token = request.match_info["token"]
    try:
        claims = read_token(deps.settings.link_keys(), token, time.time())  # rotation-aware, as /r/
    except BadLink:
        return error_page(request, 403, t(request, "signin.bad_link"))
    once = str(uuid.UUID(bytes=hashlib.sha256(b"notifier:inbox:" + token.encode()).digest()[:16]))
    async with deps.pool.acquire() as conn, conn.transaction():
        if await recipients.get(conn, claims.notice_id, claims.member_id) is None:
            return error_page(request, 404)
        expires = datetime.fromtimestamp(claims.expires_at, UTC)
        if not await console.use_once(conn, once, claims.member_id, expires):
            return error_page(request, 403, t(request, "signin.used_link"))
        sid = await start(
            conn,
            request,
            member_id=claims.member_id,
            key_id=None,
            role="member",
            unit_id=None,
            by="read_link",
        )
    response = web.HTTPSeeOther(f"/m/notices/{claims.notice_id}")
    set_cookie(request, response, sid)
    raise response


def _static(name: str) -> bytes:
    return resources.files("notifier.console").joinpath(f"static/{name}").read_bytes()


async def manifest(request: web.Request) -> web.Response:
    return web.Response(body=_static("manifest.webmanifest"), content_type="application/manifest+json")


async def service_worker(request: web.Request) -> web.Response:
    return web.Response(
        body=_static("sw.js"), content_type="text/javascript", headers={"Service-Worker-Allowed": "/m/"}
    )


@page(console_roles=False, member=True)
async def push_key(request: web.Request, session: Session) -> web.Response:
    data = await call(request, member_principal(session), webpush_api.get_vapid_public_key)
    return web.json_response(data)


@page(console_roles=False, member=True)
async def push_subscribe(request: web.Request, session: Session) -> web.Response:
    """This browser's push subscription, registered as the member's own ``webpush`` contact."""
    p = member_principal(session)
    assert p.member_id is not None
    deps = request.app[DEPS]
    if "webpush" not in deps.channels:
        return error_page(request, 404)
    try:
        subscription = json.loads(await request.text())
        target = deps.channels.get("webpush").validate_target(subscription)
    except (ValueError, InvalidTarget) as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
    sub = as_principal(request, p)
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await contacts.add(conn, p.member_id, "webpush", target)
        await audit.record(
            conn,
            sub,
            "contact.add",
            "contact",
            str(row["id"]),
            await audit.member_units(conn, p.member_id),
            {"member_id": p.member_id, "channel": "webpush", "target": "***"},
        )
    return web.json_response({"id": str(row["id"])}, status=201)
