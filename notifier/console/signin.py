"""Signing in and out: a one-time console link, or (an admin) a pasted API key; the language
toggle; a secretary of several units choosing which one to act for.

Before a session exists, the sign-in forms are protected by a double-submit token (a cookie and
a hidden field that must match), so another site cannot sign a browser in behind its back. A
link is consumed by the form post its page makes, not by the GET: a link-preview fetch of the
URL signs nobody in and does not use the link up.
"""

from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import urlsplit

from aiohttp import web

from notifier.api.keys import DEPS
from notifier.console import i18n
from notifier.console.pages import error_page, page, render, t
from notifier.console.session import (
    Session,
    clear_cookie,
    end,
    is_https,
    set_cookie,
    start,
    start_for_member,
)
from notifier.db import api_keys, console
from notifier.links import BadLink, read_console_token

PRE_COOKIE = "notifier_signin"


def _pre_token(request: web.Request) -> str:
    return request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)


def _with_pre_cookie(request: web.Request, response: web.Response, token: str) -> web.Response:
    response.set_cookie(
        PRE_COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        secure=is_https(request),
        path="/",
        max_age=3600,
    )
    return response


async def _pre_ok(request: web.Request) -> bool:
    form = await request.post()
    given, cookie = form.get("csrf"), request.cookies.get(PRE_COOKIE)
    return (
        isinstance(given, str) and cookie is not None and hmac.compare_digest(given.encode(), cookie.encode())
    )


async def sign_in_form(request: web.Request) -> web.Response:
    token = _pre_token(request)
    return _with_pre_cookie(request, render(request, "sign_in.html", {"pre": token, "error": None}), token)


async def sign_in_with_key(request: web.Request) -> web.StreamResponse:
    if not await _pre_ok(request):
        return error_page(request, 403, t(request, "error.csrf"))
    form = await request.post()
    raw = form.get("token")
    token = raw.strip() if isinstance(raw, str) else ""
    deps = request.app[DEPS]
    admin = deps.settings.admin_token
    role = key_id = unit_id = member_id = None
    if token and token.isascii() and token.isprintable() and len(token) <= 512:
        if admin is not None and hmac.compare_digest(token.encode(), admin.get_secret_value().encode()):
            role = "admin"
        else:
            limits = deps.settings.rate_limits.by_role()
            row = await api_keys.authenticate(
                deps.pool, token, {r: (lim.per_second, lim.burst) for r, lim in limits.items()}
            )
            if row is not None and row["allowed"] and row["role"] in ("admin", "service", "secretary"):
                role, key_id, unit_id, member_id = (
                    row["role"],
                    str(row["id"]),
                    row["unit_id"],
                    row["member_id"],
                )
    if role is None:
        pre = _pre_token(request)
        page_ = render(request, "sign_in.html", {"pre": pre, "error": "signin.bad_key"}, status=401)
        return _with_pre_cookie(request, page_, pre)
    async with deps.pool.acquire() as conn, conn.transaction():
        sid = await start(
            conn, request, member_id=member_id, key_id=key_id, role=role, unit_id=unit_id, by="key"
        )
    response = web.HTTPSeeOther("/console/")
    set_cookie(request, response, sid)
    raise response


async def link_page(request: web.Request) -> web.Response:
    """The link's landing page: a button that uses it (a GET never does)."""
    token = _pre_token(request)
    context = {"pre": token, "link": request.match_info["token"]}
    return _with_pre_cookie(request, render(request, "link.html", context), token)


async def use_link(request: web.Request) -> web.StreamResponse:
    if not await _pre_ok(request):
        return error_page(request, 403, t(request, "error.csrf"))
    deps = request.app[DEPS]
    secret = deps.settings.link_secret.get_secret_value().encode()
    try:
        link_id = read_console_token(secret, request.match_info["token"], time.time())
    except BadLink:
        return error_page(request, 403, t(request, "signin.bad_link"))
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await console.use_link(conn, link_id)
        if row is None:  # used already, or expired
            return error_page(request, 403, t(request, "signin.used_link"))
        sid, home = await start_for_member(conn, request, row["member_id"])
    response = web.HTTPSeeOther(home)
    set_cookie(request, response, sid)
    raise response


@page(console_roles=False)
async def sign_out(request: web.Request, session: Session) -> web.StreamResponse:
    await end(request, session)
    response = web.HTTPSeeOther("/console/sign-in")
    clear_cookie(response)
    raise response


def _safe_next(value: str | None) -> str:
    """Only a path of this site (no scheme, no host, not '//evil')."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/console/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/console/"


async def set_lang(request: web.Request) -> web.StreamResponse:
    chosen = request.match_info["lang"]
    if chosen not in i18n.LANGS:
        return error_page(request, 404)
    response = web.HTTPSeeOther(_safe_next(request.query.get("next")))
    response.set_cookie(
        i18n.COOKIE, chosen, samesite="Lax", secure=is_https(request), path="/", max_age=365 * 86400
    )
    raise response


@page()
async def switch_unit(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    unit = form.get("unit")
    async with request.app[DEPS].pool.acquire() as conn:
        if not isinstance(unit, str) or not await console.switch_unit(conn, session.id, unit):
            return error_page(request, 404)
    raise web.HTTPSeeOther("/console/")
