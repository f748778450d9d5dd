"""The meeting record and supervision pages: the secretary writes the minutes and uploads photos
at the venue (the browser's geolocation rides along; the API judges place and day), sees who came,
who was late and who was excused, records a leave; the committee reads the quarter's supervision
report per branch. Every page calls the API's own handlers (api/records.py, api/attendance.py,
api/supervision.py) as the session's principal.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from notifier.api import attendance as attendance_api
from notifier.api import notices as notices_api
from notifier.api import records as records_api
from notifier.api import supervision as supervision_api
from notifier.api.keys import DEPS
from notifier.api.problems import Problem, from_validation_error
from notifier.api.routing import Call, json_response
from notifier.console.apicall import as_principal, call
from notifier.console.member import member_principal
from notifier.console.pages import page, render
from notifier.console.session import Session
from notifier.console.units import tree_order
from notifier.db import units

REPORT_UNITS = 300


def _match(request: web.Request, **extra: str) -> dict[str, str]:
    return {"notice_id": request.match_info["notice_id"], **extra}


@page()
async def show_record(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    match = _match(request)
    notice = await call(request, p, notices_api.get_notice, query=notices_api.NoticeQuery(), match=match)
    record = await call(request, p, records_api.get_record, match=match)
    attendance = await call(
        request, p, attendance_api.get_attendance, query=attendance_api.AttendanceQuery(), match=match
    )
    done = request.query.get("done", "")
    return render(
        request,
        "records_record.html",
        {"notice": notice, "record": record, "attendance": attendance, "done": done},
    )


def _validated(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, data=data) from None


@page()
async def post_minutes(request: web.Request, session: Session) -> web.Response:
    form = await request.post()
    fields = {k: form.get(k) for k in ("minutes", "lat", "lng", "datum", "accuracy_m")}
    body = _validated(records_api.MinutesIn, {k: v for k, v in fields.items() if v not in (None, "")})
    nid = request.match_info["notice_id"]
    await call(request, session.principal, records_api.put_minutes, body=body, match=_match(request))
    raise web.HTTPSeeOther(f"/console/meetings/{nid}/record?done=minutes")


@page()
async def post_photo(request: web.Request, session: Session) -> web.Response:
    """The page's script posts one photo (the raw file, the position in the query, the CSRF token
    in a header): the answer is JSON for the script -- the photo, or the problem's reason."""
    where = {k: request.query[k] for k in ("lat", "lng", "datum", "accuracy_m") if k in request.query}
    try:
        query = _validated(records_api.DevicePosition, where)
        sub = as_principal(request, session.principal, match=_match(request))
        return await records_api.add_photo(sub, Call(None, query))  # type: ignore[return-value]
    except Problem as problem:
        return json_response({"status": problem.status, "detail": problem.detail}, status=problem.status)


@page()
async def photo(request: web.Request, session: Session) -> web.StreamResponse:
    sub = as_principal(
        request, session.principal, match=_match(request, photo_id=request.match_info["photo_id"])
    )
    return await records_api.get_photo(sub, Call(None, None))


@page()
async def post_absence(request: web.Request, session: Session) -> web.Response:
    form = await request.post()
    member_id = str(form.get("member_id", ""))
    body = _validated(attendance_api.AbsenceIn, {"reason": form.get("reason", "")})
    await call(
        request,
        session.principal,
        attendance_api.put_absence,
        body=body,
        match=_match(request, member_id=member_id),
    )
    raise web.HTTPSeeOther(f"/console/meetings/{request.match_info['notice_id']}/record?done=absence")


@page(console_roles=False, member=True)
async def member_leave(request: web.Request, session: Session) -> web.Response:
    """A member asks for leave (请假) from a meeting on its page: the reason goes to the API as the
    member's own principal (the same rules as a member key: invited, before the meeting ends)."""
    form = await request.post()
    p = member_principal(session)
    body = _validated(attendance_api.AbsenceIn, {"reason": form.get("reason", "")})
    nid = request.match_info["notice_id"]
    await call(
        request, p, attendance_api.put_absence, body=body, match=_match(request, member_id=p.member_id or "")
    )
    raise web.HTTPSeeOther(f"/m/meetings/{nid}?done=leave")


@page()
async def show_supervision(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        rows = [units.as_dict(r) for r in await units.list_units(conn, p.scope_root, None, REPORT_UNITS)]
    choices = [r for _, r in tree_order(rows, p.scope_root)]
    unit_id = request.query.get("unit") or (p.scope_root or (choices[0]["id"] if choices else ""))
    quarter = request.query.get("quarter") or None
    report = None
    if unit_id:
        query = _validated(supervision_api.MeetingsReportQuery, {"quarter": quarter} if quarter else {})
        report = await call(
            request, p, supervision_api.meetings_report, query=query, match={"unit_id": unit_id}
        )
    return render(
        request,
        "records_supervision.html",
        {
            "choices": choices,
            "unit_id": unit_id,
            "quarter": quarter or (report or {}).get("quarter", ""),
            "report": report,
        },
    )
