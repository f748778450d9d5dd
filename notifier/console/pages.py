"""What every console and member page shares: sessions, CSRF, the strict CSP, rendering, errors.

``page(...)`` wraps a handler: it loads the session (else redirects to sign-in), refuses a form
post without the session's CSRF token (403, before the handler runs: nothing changes), and turns
an API problem (404 out of scope, 409, 422) into an HTML page with the same status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
from aiohttp import web

from notifier.api.keys import DEPS
from notifier.api.problems import Problem
from notifier.console import charts, i18n
from notifier.console.apicall import UNREAD
from notifier.console.session import CSRF_FIELD, CSRF_HEADER, SESSION, Session, csrf_ok, load
from notifier.db import console, quiet
from notifier.db.quiet import DEFAULT_TIMEZONE

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; manifest-src 'self'; worker-src 'self'"
)
PAGE_PREFIXES = ("/console", "/m/", "/m")

PageHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
LANG: web.RequestKey[str] = web.RequestKey("console_lang", str)
TZ: web.RequestKey[str] = web.RequestKey("console_tz", str)


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every console and member page (and its static files) carries the
    strict CSP; pages are never cached (they show live, per-session data)."""
    if request.path.startswith(PAGE_PREFIXES):
        response.headers["Content-Security-Policy"] = CSP
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.path.startswith("/console/static/"):
            response.headers.setdefault("Cache-Control", "no-store")


def lang(request: web.Request) -> str:
    if LANG not in request:
        request[LANG] = i18n.negotiate(request)
    return request[LANG]


def t(request: web.Request, key: str, **values: object) -> str:
    return i18n.translate(lang(request), key, **values)


def when(request: web.Request, value: str | datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A time in the unit's time zone (the session's unit; an admin's: Asia/Shanghai)."""
    if value is None or value == "":
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE))).strftime(fmt)


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    session = request.get(SESSION)
    base = {
        "t": lambda key, **kw: t(request, key, **kw),
        "when": lambda value, fmt="%Y-%m-%d %H:%M": when(request, value, fmt),
        "lang": lang(request),
        "session": session,
        "csrf": session.csrf if session else "",
        "path": request.path_qs,
        "bar": charts.bar,
        "pct": charts.pct,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def error_page(request: web.Request, status: int, detail: str | None = None) -> web.Response:
    key = {403: "error.forbidden", 404: "error.not_found", 409: "error.conflict", 429: "error.too_many"}.get(
        status, "error.invalid"
    )
    return render(request, "error.html", {"status": status, "key": key, "detail": detail}, status=status)


async def _set_timezone(request: web.Request, session: Session, member_page: bool) -> None:
    """Times in the reader's zone: a member's page in theirs (db/quiet.py's rule), a console
    page in its unit's; else the default."""
    if member_page and session.member_id is not None:
        async with request.app[DEPS].pool.acquire() as conn:
            request[TZ] = await quiet.member_timezone(conn, session.member_id)
    elif session.principal.unit_id is not None:
        async with request.app[DEPS].pool.acquire() as conn:
            request[TZ] = await console.timezone(conn, session.principal.unit_id)


def page(*, console_roles: bool = True, member: bool = False) -> Callable[[PageHandler], web_handler]:
    """A page handler: ``console_roles`` needs an admin, service or secretary session; ``member``
    a session of a member (their inbox)."""

    def wrap(handler: PageHandler) -> web_handler:
        async def run(request: web.Request) -> web.StreamResponse:
            request[UNREAD] = request.clone()  # before the body is read (apicall.py)
            try:
                session = await load(request)
            except Problem as problem:  # 429: the session's rate limit
                page_ = error_page(request, problem.status)
                page_.headers.update(problem.headers or {})
                return page_
            if session is None:
                if request.method == "POST":
                    return error_page(request, 403)
                raise web.HTTPSeeOther("/console/sign-in")
            request[SESSION] = session
            p = session.principal
            if console_roles and p.role not in ("admin", "service", "secretary"):
                if session.member_id:
                    raise web.HTTPSeeOther("/m/")
                return error_page(request, 403)
            if member and session.member_id is None:
                return error_page(request, 404, t(request, "member.no_inbox"))
            if request.method == "POST":
                given = request.headers.get(CSRF_HEADER)
                if given is None:
                    form = await request.post()
                    value = form.get(CSRF_FIELD)
                    given = value if isinstance(value, str) else None
                if not csrf_ok(session, given):
                    log.info("refused a console post without a valid CSRF token")
                    return error_page(request, 403, t(request, "error.csrf"))
            await _set_timezone(request, session, member)
            try:
                return await handler(request, session)
            except Problem as problem:
                fields = "; ".join(f"{e['field']}: {e['message']}" for e in problem.errors or [])
                return error_page(request, problem.status, fields or problem.detail)

        return run

    return wrap


web_handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
