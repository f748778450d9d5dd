"""Study points pages: 学习积分 per branch for secretaries and the committee (``/console/points``),
"my points" today and this month on the member's inbox, and a lesson's point on its page.

The member's lesson page reports its view (``static/points.js``): opened when shown, the visible
time every few seconds, closed when hidden; the API measures the dwell on the server's clock and
awards ``lesson_read`` once it is reached. Handlers call the API's own handlers (apicall.py).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from notifier.api import points as points_api
from notifier.api.keys import DEPS
from notifier.api.principal import Principal
from notifier.console.apicall import call
from notifier.console.pages import TZ, page, render
from notifier.console.session import Session
from notifier.db import points, units
from notifier.db.quiet import DEFAULT_TIMEZONE

TREE_LIMIT = 300


def _month(request: web.Request) -> tuple[dt.date, dt.date, str]:
    """The month asked for (``?month=YYYY-MM``, default this one): its first day, the next
    month's first day, and the label."""
    today = dt.datetime.now(ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE))).date()
    start = today.replace(day=1)
    asked = request.query.get("month", "")
    if len(asked) == 7:
        try:
            start = dt.date.fromisoformat(asked + "-01")
        except ValueError:
            pass
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end, start.strftime("%Y-%m")


@page()
async def show_points(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    async with request.app[DEPS].pool.acquire() as conn:
        rows = await units.list_units(conn, p.scope_root, None, TREE_LIMIT)
    choices = [{"id": r["id"], "name": r["name"]} for r in rows]
    unit_id = request.query.get("unit") or p.scope_root or (choices[0]["id"] if choices else None)
    start, end, month = _month(request)
    context: dict[str, Any] = {"choices": choices, "unit_id": unit_id, "month": month, "report": None}
    if unit_id is not None:
        query = points_api.RangeQuery.model_validate({"from": start, "to": end})
        context["report"] = await call(
            request, p, points_api.unit_points, query=query, match={"unit_id": unit_id}
        )
        rules = await call(
            request,
            p,
            points_api.list_rules,
            query=points_api.RulesQuery(unit=None if p.scope_root else context["report"]["organisation"]),
        )
        context["rules"] = rules["items"]
        context["examples"] = points_api.EXAMPLES
    return render(request, "points_branches.html", context)


def member_principal(session: Session) -> Principal:
    assert session.member_id is not None
    return Principal(None, "member", None, session.member_id)


async def my_points(request: web.Request, session: Session) -> dict[str, Any]:
    """Today's and this month's points of the session's member (the inbox shows them)."""
    p = member_principal(session)
    query = points_api.RangeQuery.model_validate({})
    data: dict[str, Any] = await call(
        request, p, points_api.member_points, query=query, match={"member_id": p.member_id or ""}
    )
    return data


async def lesson_state(request: web.Request, member_id: str, notice: dict[str, Any]) -> dict[str, Any] | None:
    """For a lesson page: the rule a read earns under and what this lesson earned (None: not a
    lesson, or the member's organisation has no lesson_read rule)."""
    if notice["kind"] != "lesson":
        return None
    async with request.app[DEPS].pool.acquire() as conn:
        rule = await points.member_rule(conn, member_id, points_api.LESSON_READ)
        if rule is None:
            return None
        earned = await points.earned(conn, member_id, points_api.LESSON_READ, f"notice:{notice['id']}")
    return {"points": rule["points"], "dwell": rule["min_dwell_seconds"], "earned": earned}


@page(console_roles=False, member=True)
async def open_view(request: web.Request, session: Session) -> web.Response:
    p = member_principal(session)
    out = await call(
        request,
        p,
        points_api.open_view,
        body=points_api.ViewIn(),
        match={"notice_id": request.match_info["notice_id"]},
    )
    return web.json_response(out, status=201)


@page(console_roles=False, member=True)
async def update_view(request: web.Request, session: Session) -> web.Response:
    p = member_principal(session)
    try:
        raw = json.loads(await request.text() or "{}")
        body = points_api.ViewUpdate.model_validate(
            {"visible_seconds": raw.get("visible_seconds"), "closed": bool(raw.get("closed", False))}
        )
    except (ValueError, AttributeError):
        return web.json_response({"error": "bad view report"}, status=422)
    match = {"notice_id": request.match_info["notice_id"], "view_id": request.match_info["view_id"]}
    out = await call(request, p, points_api.update_view, body=body, match=match)
    return web.json_response(out)
