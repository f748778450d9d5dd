"""/v1/meetings/{id}/attendance and /absences: who came, who was late, who was excused (请假).

The list is derived, never stored: every recipient of the meeting notice (in the caller's slice),
``present`` with an accepted check-in at or before the start, ``late`` with one after it,
``excused`` with a leave recorded and no check-in, else ``absent``. The rate leaves the excused
out of the denominator (domain/supervision.py). A leave is stated by the member themselves (a
member key, before the meeting ends) or recorded by a secretary who sees the member there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.notices import load_visible_notice
from notifier.api.principal import Principal
from notifier.api.problems import invalid, not_found
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.types import Id, Strict, check_path_id, parse_uuid
from notifier.db import records
from notifier.db.pool import Connection, Record
from notifier.domain.supervision import attendance_rate

routes = Router()

Status = Literal["present", "late", "excused", "absent"]


class Leave(BaseModel):
    reason: str
    by_member: bool = Field(description="stated by the member (else recorded by a secretary)")
    recorded_at: datetime


class Attendee(BaseModel):
    member_id: str
    name: str
    status: Status
    checked_in_at: datetime | None = Field(description="the accepted check-in (server clock)")
    attempts: int = Field(description="check-in attempts, accepted or not")
    leave: Leave | None


class AttendanceSummary(BaseModel):
    expected: int
    present: int = Field(description="on time or late")
    late: int
    excused: int
    absent: int
    rate: float | None = Field(description="present / (expected - excused); null when nobody is expected")


class AttendanceOut(BaseModel):
    notice_id: str
    starts_at: datetime
    summary: AttendanceSummary
    members: list[Attendee]


class AttendanceQuery(Strict):
    unit: Id | None = Field(default=None, description="only this unit's subtree (inside your reach)")


class AbsenceIn(Strict):
    reason: str = Field(min_length=1, max_length=500, description="why the member cannot attend")


class AbsenceOut(BaseModel):
    notice_id: str
    member_id: str
    leave: Leave


def status_of(row: Record) -> Status:
    if row["first_ok"] is not None:
        return "late" if row["late"] else "present"
    return "excused" if row["reason"] is not None else "absent"


def attendance_view(notice_id: str, starts_at: datetime, rows: list[Record]) -> dict[str, Any]:
    members = [
        {
            "member_id": r["member_id"],
            "name": r["name"],
            "status": status_of(r),
            "checked_in_at": r["first_ok"],
            "attempts": r["attempts"],
            "leave": None
            if r["reason"] is None
            else {"reason": r["reason"], "by_member": r["by_member"], "recorded_at": r["recorded_at"]},
        }
        for r in rows
    ]
    count = {s: sum(1 for m in members if m["status"] == s) for s in ("present", "late", "excused", "absent")}
    present = count["present"] + count["late"]
    return {
        "notice_id": notice_id,
        "starts_at": starts_at,
        "summary": {
            "expected": len(members),
            "present": present,
            "late": count["late"],
            "excused": count["excused"],
            "absent": count["absent"],
            "rate": attendance_rate(present, len(members), count["excused"]),
        },
        "members": members,
    }


@routes.route(
    "GET",
    "/v1/meetings/{notice_id}/attendance",
    summary="Attendance: present, late, excused (请假, with the reason) and absent, from the check-ins",
    tag="meetings",
    query=AttendanceQuery,
    response=AttendanceOut,
)
async def get_attendance(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(AttendanceQuery)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        view = await load_visible_notice(conn, p, request.match_info["notice_id"])
        meeting = await records.venue(conn, view.id)
        if meeting is None:
            raise not_found("meeting")
        if q.unit is not None:
            await require_unit(conn, p, q.unit)
        rows = await records.attendance(conn, view.id, q.unit or view.slice_root)
    data = attendance_view(view.id, meeting["starts_at"], rows)
    return json_response(AttendanceOut.model_validate(data).model_dump(mode="json"))


async def _absence_target(conn: Connection, p: Principal, notice_id: str, member_id: str) -> Record:
    """The meeting, when the caller may record ``member_id``'s leave from it: the member themselves
    (a member key) or a secretary who sees the member among the recipients; else 404."""
    if p.role == "member":
        nid = parse_uuid(notice_id)
        meeting = None if nid is None else await records.venue(conn, nid)
        if meeting is None or member_id != p.member_id:
            raise not_found("meeting")
        if not await records.is_recipient(conn, str(meeting["notice_id"]), member_id, None):
            raise not_found("meeting")
        return meeting
    view = await load_visible_notice(conn, p, notice_id)
    meeting = await records.venue(conn, view.id)
    if meeting is None:
        raise not_found("meeting")
    if not await records.is_recipient(conn, view.id, member_id, view.slice_root):
        raise not_found("member")
    return meeting


@routes.route(
    "PUT",
    "/v1/meetings/{notice_id}/absences/{member_id}",
    summary="Record a leave (请假) from a meeting, with the reason (the member, or a secretary)",
    tag="meetings",
    body=AbsenceIn,
    response=AbsenceOut,
    status=201,
    responses={200: Reply("replaced"), 422: "a member states a leave only before the meeting ends"},
)
async def put_absence(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    member_id = check_path_id(request.match_info["member_id"], "member_id")
    body = call.body_as(AbsenceIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        meeting = await _absence_target(conn, p, request.match_info["notice_id"], member_id)
        notice_id = str(meeting["notice_id"])
        by_member = p.role == "member"
        if by_member and meeting["now"] >= meeting["ends_at"]:
            raise invalid("reason", "the meeting is over: ask the secretary to record the leave")
        row = await records.put_absence(conn, notice_id, member_id, body.reason, by_member, p.key_id)
        # Never the reason itself: it may be personal.
        await audit.record(
            conn, request, "meeting.absence", "notice", notice_id, [p.scope_root], {"member_id": member_id}
        )
    out = {
        "notice_id": notice_id,
        "member_id": member_id,
        "leave": {"reason": row["reason"], "by_member": row["by_member"], "recorded_at": row["recorded_at"]},
    }
    return json_response(
        AbsenceOut.model_validate(out).model_dump(mode="json"), status=201 if row["created"] else 200
    )


@routes.route(
    "DELETE",
    "/v1/meetings/{notice_id}/absences/{member_id}",
    summary="Withdraw a leave",
    tag="meetings",
    status=204,
)
async def delete_absence(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    member_id = check_path_id(request.match_info["member_id"], "member_id")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        meeting = await _absence_target(conn, p, request.match_info["notice_id"], member_id)
        notice_id = str(meeting["notice_id"])
        if not await records.delete_absence(conn, notice_id, member_id):
            raise not_found("absence")
        await audit.record(
            conn,
            request,
            "meeting.absence_withdrawn",
            "notice",
            notice_id,
            [p.scope_root],
            {"member_id": member_id},
        )
    return web.Response(status=204)
