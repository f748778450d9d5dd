"""The secretary's notices: the list, one notice live (counters, per-unit bars, roll-call), the
roll-call CSV, one member's timeline, remind-now and recall.

Every figure comes from the API's own handlers called as the session's principal (apicall.py),
so a page shows exactly what the API shows that caller.
"""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Any, get_args
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import ValidationError

from notifier.api import notices as notices_api
from notifier.api import recall as recall_api
from notifier.api import remind as remind_api
from notifier.api import rollcall as rollcall_api
from notifier.api import stream as stream_api
from notifier.api import timeline as timeline_api
from notifier.api import unit_counts as unit_counts_api
from notifier.api.keys import DEPS
from notifier.api.principal import Principal
from notifier.api.problems import Problem
from notifier.api.routing import Call
from notifier.console.apicall import as_principal, call
from notifier.console.pages import TZ, error_page, page, render, t
from notifier.console.session import Session
from notifier.db import notices as notices_db
from notifier.db.quiet import DEFAULT_TIMEZONE

PAGE_SIZE = 20
KINDS = ("ding", "notice", "lesson", "meeting")


def _day(request: web.Request, value: str | None) -> datetime | None:
    """A date typed in the filter, as local midnight in the unit's time zone."""
    if not value:
        return None
    day = datetime.strptime(value, "%Y-%m-%d").date()  # noqa: DTZ007 - a date, localised below
    return datetime.combine(day, time(0), ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE)))


@page()
async def list_notices(request: web.Request, session: Session) -> web.Response:
    q = request.query
    filters = {k: q.get(k, "") for k in ("kind", "unit", "from", "to", "q")}
    try:
        query = unit_counts_api.NoticeListQuery(
            unit=filters["unit"] or None,
            kind=filters["kind"] or None,
            created_after=_day(request, filters["from"]),
            created_before=_day(request, filters["to"]),
            q=filters["q"] or None,
            limit=PAGE_SIZE,
            cursor=q.get("cursor") or None,
        )
    except (ValidationError, ValueError):
        return error_page(request, 422, t(request, "error.filters"))
    data = await call(request, session.principal, unit_counts_api.list_notices, query=query)
    more = (
        {**{k: v for k, v in filters.items() if v}, "cursor": data["next_cursor"]}
        if data["next_cursor"]
        else None
    )
    return render(
        request, "notices.html", {"items": data["items"], "filters": filters, "kinds": KINDS, "more": more}
    )


async def notice_data(request: web.Request, p: Principal) -> dict[str, Any]:
    """The notice, its per-unit roll-up and its roll-call, as this caller sees them."""
    notice = await call(request, p, notices_api.get_notice, query=notices_api.NoticeQuery())
    rollup: dict[str, Any] = {"units": []}
    async with request.app[DEPS].pool.acquire() as conn:
        row = await notices_db.get(conn, notice["id"])
        # The API's default for a bound caller (its unit); for an admin, the stream's (stream.slice_of).
        parent = (
            None if p.scope_root is not None or row is None else await unit_counts_api.unit_parent(conn, row)
        )
    if p.scope_root is not None or parent is not None:
        rollup = await call(
            request, p, unit_counts_api.notice_units, query=unit_counts_api.RollupQuery(parent=parent)
        )
    roll = await call(request, p, rollcall_api.roll_call, query=rollcall_api.RollCallQuery(limit=500))
    return {"notice": notice, "rollup": rollup, "roll": roll, "parent": parent}


@page()
async def show_notice(request: web.Request, session: Session) -> web.Response:
    data = await notice_data(request, session.principal)
    channels = request.app[DEPS].channels.ids()
    context = {
        **data,
        "channels": channels,
        "states": get_args(notices_api.NoticeState),
        "remind_key": str(uuid.uuid4()),
        "done": request.query.get("done"),
        "n": request.query.get("n"),
    }
    return render(request, "notice.html", context)


@page()
async def roll_call_fragment(request: web.Request, session: Session) -> web.Response:
    """htmx: the roll-call section alone, re-fetched as the stream's counts change (console.js
    throttles it to one fetch per 2 s); its empty message follows the notice's state."""
    p = session.principal
    notice = await call(request, p, notices_api.get_notice, query=notices_api.NoticeQuery())
    roll = await call(request, p, rollcall_api.roll_call, query=rollcall_api.RollCallQuery(limit=500))
    return render(request, "_rollcall.html", {"notice": notice, "roll": roll})


@page()
async def notice_stream(request: web.Request, session: Session) -> web.StreamResponse:
    """Server-Sent Events of the notice's counts for this session's slice: the API's own stream
    (api/stream.py), same visibility, same frames."""
    sub = as_principal(request, session.principal)
    return await stream_api.notice_stream(sub, Call(None, stream_api.StreamQuery()))


@page()
async def roll_call_csv(request: web.Request, session: Session) -> web.StreamResponse:
    sub = as_principal(request, session.principal, {"Accept": rollcall_api.CSV_TYPE})
    return await rollcall_api.roll_call(sub, Call(None, rollcall_api.RollCallQuery(limit=1000)))


@page()
async def member_timeline(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    notice = await call(request, p, notices_api.get_notice, query=notices_api.NoticeQuery())
    data = await call(request, p, timeline_api.recipient_timeline)
    return render(request, "timeline.html", {"notice": notice, "timeline": data})


@page()
async def remind_now(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    chosen = [c for c in form.getall("channels", []) if isinstance(c, str)]
    key = form.get("key")
    nid = request.match_info["notice_id"]
    try:
        body = remind_api.RemindIn(channels=chosen)
    except ValidationError:
        return error_page(request, 422, t(request, "notice.remind_pick"))
    headers = {notices_api.IDEMPOTENCY_HEADER: key} if isinstance(key, str) and key else {}
    try:
        out = await call(request, session.principal, remind_api.remind_notice, body=body, headers=headers)
    except Problem as problem:
        if problem.status != 409:
            raise
        return error_page(request, 409, problem.detail)
    raise web.HTTPSeeOther(f"/console/notices/{nid}?done=remind&n={sum(out['reminded'].values())}")


@page()
async def recall_notice(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    nid = request.match_info["notice_id"]
    if form.get("confirm") != "yes":
        notice = await call(
            request, session.principal, notices_api.get_notice, query=notices_api.NoticeQuery()
        )
        return render(request, "recall.html", {"notice": notice})
    await call(request, session.principal, recall_api.recall_notice)
    raise web.HTTPSeeOther(f"/console/notices/{nid}?done=recall")
