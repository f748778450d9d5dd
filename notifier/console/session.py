"""Console sessions: server-side rows (db/console.py) keyed by a random id in a cookie.

The cookie is ``HttpOnly; SameSite=Lax; Path=/`` and ``Secure`` when the request came over HTTPS
(directly, or through a proxy saying ``X-Forwarded-Proto: https``). Every form post carries the
session's synchroniser token (``csrf``); ``check_csrf`` refuses one without it (403, nothing
changes). A session acts as a principal (api/principal.py) built from its row, so a page sees
exactly what an API key of the same role and unit sees: the page handlers call the API's own
handlers with it (apicall.py).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from aiohttp import web

from notifier.api import ratelimit
from notifier.api.audit import member_units, record_as
from notifier.api.keys import DEPS
from notifier.api.principal import Principal
from notifier.db import console
from notifier.db.pool import Connection

COOKIE = "notifier_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    csrf: str
    principal: Principal
    member_id: str | None
    units: tuple[str, ...]  # the units a member session may act for as secretary


SESSION: web.RequestKey[Session] = web.RequestKey("console_session", Session)


def is_https(request: web.Request) -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="Lax",
        secure=is_https(request),
        path="/",
        max_age=request.app[DEPS].settings.console_session_seconds,
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")


async def start(
    conn: Connection,
    request: web.Request,
    *,
    member_id: str | None,
    key_id: str | None,
    role: str,
    unit_id: str | None,
    by: str,
) -> str:
    """A new session (its cookie value): the caller sets the cookie on its response. The sign-in
    is audited (``console.sign_in``: by link, or by an API key when ``key_id``/``role`` admin say so)."""
    session_id = secrets.token_urlsafe(32)
    await console.purge(conn)
    await console.insert_session(
        conn,
        session_id,
        member_id=member_id,
        key_id=key_id,
        role=role,
        unit_id=unit_id,
        csrf=secrets.token_urlsafe(32),
        ttl=float(request.app[DEPS].settings.console_session_seconds),
    )
    p = Principal(key_id, role, unit_id, member_id)
    await _audit(conn, request, p, "console.sign_in", {"by": by})
    return session_id


async def _audit(
    conn: Connection, request: web.Request, p: Principal, action: str, details: dict[str, str]
) -> None:
    """An entry about a session: about the member's units (or the key's) -- what their
    secretaries may read in the audit log."""
    units = [p.unit_id, *(await member_units(conn, p.member_id) if p.member_id else [])]
    target = ("member", p.member_id) if p.member_id else ("api_key", p.key_id or "admin")
    await record_as(conn, request, p, action, target[0], target[1], units, details)


async def start_for_member(conn: Connection, request: web.Request, member_id: str | None) -> tuple[str, str]:
    """A session for a member signing in with a link: secretary of their first unit when they are
    one, else a member (their inbox); ``member_id`` None: the bootstrap admin. (session id, home)"""
    if member_id is None:
        return await start(
            conn, request, member_id=None, key_id=None, role="admin", unit_id=None, by="link"
        ), "/console/"
    units = await console.secretary_of(conn, member_id)
    if units:
        sid = await start(
            conn, request, member_id=member_id, key_id=None, role="secretary", unit_id=units[0], by="link"
        )
        return sid, "/console/"
    return await start(
        conn, request, member_id=member_id, key_id=None, role="member", unit_id=None, by="link"
    ), "/m/"


async def load(request: web.Request) -> Session | None:
    session_id = request.cookies.get(COOKIE)
    if not session_id or len(session_id) > 128:
        return None
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        limits = deps.settings.rate_limits.by_role()
        row = await console.touch_session(
            conn,
            session_id,
            float(deps.settings.console_idle_seconds),
            {role: (lim.per_second, lim.burst) for role, lim in limits.items()},
        )
        if row is None or not row["key_usable"]:
            return None
        if row["limited"]:  # as an API key's requests are (api/ratelimit.py)
            rate = ratelimit.state(row, limits[row["role"]])
            request[ratelimit.RATE_STATE] = rate
            if not row["allowed"]:
                raise ratelimit.too_many_requests(rate)
        member_id = row["member_id"]
        units = (
            tuple(await console.secretary_of(conn, member_id)) if member_id and row["key_id"] is None else ()
        )
    key_id = None if row["key_id"] is None else str(row["key_id"])
    role = row["role"]
    if key_id is not None:
        p = Principal(key_id, role, row["unit_id"], member_id)
    elif role == "admin":
        p = Principal(None, "admin")
    elif role == "secretary" and row["role_holds"]:
        p = Principal(None, "secretary", row["unit_id"], member_id, session_owner=f"member:{member_id}")
    else:  # no longer a secretary of that unit: only their own inbox remains
        p = Principal(None, "member", None, member_id)
    return Session(session_id, row["csrf"], p, member_id, units)


async def end(request: web.Request, session: Session) -> None:
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        await console.end_session(conn, session.id)
        await _audit(conn, request, session.principal, "console.sign_out", {})


def csrf_ok(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())
