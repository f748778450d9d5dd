"""Supervision of 三会一课: unit types, the meetings each type must hold, and the quarter's report.

- ``PUT /v1/units/{id}/type``: a unit's type (committee, branch, group ...; any lowercase code).
  Kept apart from ``PUT /v1/units/{id}``, which replaces the whole unit: a type set here survives it.
- ``GET|PUT /v1/meeting-requirements``: per unit type, how many meetings of which type every month
  or quarter (one list for the deployment; admins replace it whole). Seeded with 支委会 monthly,
  党员大会 and 党课 quarterly for ``branch``, 党小组会 monthly for ``group``.
- ``GET /v1/units/{id}/meetings/report?quarter=2026Q4``: every unit of the subtree with, per meeting
  type, what was required and held in each period, the overdue periods (ended, short of meetings),
  and the attendance rate over its held meetings; rolled up so each unit also says how many units
  below it are behind. domain/supervision.py defines held, overdue and the rate.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.problems import invalid, invalid_many
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Strict
from notifier.db import console, receipts, supervision
from notifier.db.pool import Record
from notifier.domain.supervision import QUARTER_PATTERN, Every, Quarter, attendance_rate, period_counts

routes = Router()

UNIT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
MAX_REQUIREMENTS = 200


class UnitTypeIn(Strict):
    unit_type: str | None = Field(
        pattern=UNIT_TYPE_PATTERN, description="e.g. committee, branch, group; null: none (no requirements)"
    )


class UnitTypeOut(BaseModel):
    unit_id: str
    unit_type: str | None


class Requirement(Strict):
    unit_type: str = Field(pattern=UNIT_TYPE_PATTERN)
    meeting_type: str = Field(min_length=1, max_length=64, description="a code of GET /v1/meeting-types")
    every: Literal["month", "quarter"]
    times: int = Field(default=1, ge=1, le=31, description="meetings required in each period")


class Requirements(Strict):
    requirements: list[Requirement] = Field(max_length=MAX_REQUIREMENTS)


class MeetingsReportQuery(Strict):
    quarter: str | None = Field(
        default=None, pattern=QUARTER_PATTERN, description="YYYYQn; default: the current quarter"
    )


class MeetingPeriod(BaseModel):
    period: str = Field(description="2026-10 (a month) or 2026Q4 (the quarter)")
    required: int
    held: int
    ended: bool
    overdue: bool = Field(description="ended with fewer meetings held than required")


class MeetingTypeReport(BaseModel):
    meeting_type: str
    every: Literal["month", "quarter"] | None = Field(description="null: held, but not required")
    required: int = Field(description="over the whole quarter")
    held: int
    overdue: int = Field(description="periods that ended short")
    periods: list[MeetingPeriod]


class AttendanceTotals(BaseModel):
    expected: int
    present: int
    excused: int
    rate: float | None = Field(description="present / (expected - excused) over the held meetings")


class ScheduledMeeting(BaseModel):
    notice_id: str
    meeting_type: str
    starts_at: datetime
    held: bool


class UnitMeetingsReport(BaseModel):
    unit_id: str
    name: str
    parent_id: str | None
    depth: int
    unit_type: str | None
    required: int
    held: int
    overdue: int
    meetings: list[MeetingTypeReport]
    attendance: AttendanceTotals
    schedule: list[ScheduledMeeting] = Field(description="its meetings that start in the quarter")
    behind: bool = Field(description="this unit has an overdue period")
    units_behind_below: int = Field(description="units below this one that are behind")


class SupervisionReport(BaseModel):
    unit_id: str
    quarter: str
    timezone: str
    as_of: datetime = Field(description="the server clock the report was judged by")
    units: list[UnitMeetingsReport]


@routes.route(
    "PUT",
    "/v1/units/{unit_id}/type",
    summary="Set a unit's type (what its required meetings are looked up by)",
    tag="meetings",
    body=UnitTypeIn,
    response=UnitTypeOut,
)
async def put_unit_type(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(UnitTypeIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await require_unit(conn, p, request.match_info["unit_id"])
        await supervision.set_unit_type(conn, row["id"], body.unit_type)
        await audit.record(
            conn, request, "unit.type", "unit", row["id"], [row["id"]], {"unit_type": body.unit_type}
        )
    return json_response({"unit_id": row["id"], "unit_type": body.unit_type})


def _requirements(rows: list[Record]) -> dict[str, Any]:
    return {"requirements": [dict(r) for r in rows]}


@routes.route(
    "GET",
    "/v1/meeting-requirements",
    summary="Which meetings each unit type must hold, every month or quarter",
    tag="meetings",
    response=Requirements,
)
async def get_requirements(request: web.Request, call: Call) -> web.Response:
    principal(request).require("admin", "service", "secretary")
    async with request.app[DEPS].pool.acquire() as conn:
        rows = await supervision.requirements(conn)
    return json_response(_requirements(rows))


@routes.route(
    "PUT",
    "/v1/meeting-requirements",
    summary="Replace the meeting requirements (admin)",
    tag="meetings",
    body=Requirements,
    response=Requirements,
    responses={422: "a meeting type is unknown; a (unit_type, meeting_type) pair is listed twice"},
)
async def put_requirements(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin")
    body = call.body_as(Requirements)
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        known = await supervision.known_meeting_types(
            conn, sorted({r.meeting_type for r in body.requirements})
        )
        errors: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for i, r in enumerate(body.requirements):
            if r.meeting_type not in known:
                errors.append((f"requirements[{i}].meeting_type", "unknown meeting type"))
            elif (r.unit_type, r.meeting_type) in seen:
                errors.append((f"requirements[{i}]", "this unit type and meeting type are listed already"))
            seen.add((r.unit_type, r.meeting_type))
        if errors:
            raise invalid_many(errors[:100])
        await supervision.replace_requirements(
            conn, [(r.unit_type, r.meeting_type, r.every, r.times) for r in body.requirements]
        )
        await audit.record(
            conn, request, "meeting.requirements", "meeting_requirements", "all", [], {"count": len(seen)}
        )
        rows = await supervision.requirements(conn)
    return json_response(_requirements(rows))


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tz)


def build_report(
    unit_rows: list[Record], meeting_rows: list[Record], quarter: Quarter, today: date
) -> list[dict[str, Any]]:
    """The rows of the two report statements, as one entry per unit (pure: no database)."""
    by_unit: dict[str, list[Record]] = {}
    for m in meeting_rows:
        by_unit.setdefault(m["unit_id"], []).append(m)
    out: list[dict[str, Any]] = []
    for u in unit_rows:
        held_rows = [m for m in by_unit.get(u["id"], []) if m["held"]]
        days: dict[str, list[date]] = {}
        for m in held_rows:
            days.setdefault(m["type"], []).append(m["day"])
        types: list[dict[str, Any]] = []
        required_types = list(zip(u["req_types"], u["req_every"], u["req_times"], strict=True))
        for code, every, times in required_types:
            counts = period_counts(quarter, every, times, days.get(code, []), today, u["since"])
            types.append(_type_report(code, every, counts))
        for code in sorted(set(days) - {c for c, _, _ in required_types}):
            types.append(
                {
                    "meeting_type": code,
                    "every": None,
                    "required": 0,
                    "held": len(days[code]),
                    "overdue": 0,
                    "periods": [],
                }
            )
        expected = sum(int(m["expected"]) for m in held_rows)
        present = sum(int(m["present"]) for m in held_rows)
        excused = sum(int(m["excused"]) for m in held_rows)
        overdue = sum(t["overdue"] for t in types)
        out.append(
            {
                "unit_id": u["id"],
                "name": u["name"],
                "parent_id": u["parent_id"],
                "depth": u["depth"],
                "unit_type": u["unit_type"],
                "required": sum(t["required"] for t in types),
                "held": sum(t["held"] for t in types),
                "overdue": overdue,
                "meetings": types,
                "attendance": {
                    "expected": expected,
                    "present": present,
                    "excused": excused,
                    "rate": attendance_rate(present, expected, excused),
                },
                "schedule": [
                    {
                        "notice_id": str(m["notice_id"]),
                        "meeting_type": m["type"],
                        "starts_at": m["starts_at"],
                        "held": m["held"],
                    }
                    for m in by_unit.get(u["id"], [])
                ],
                "behind": overdue > 0,
                "units_behind_below": 0,
            }
        )
    _roll_up(out)
    return out


def _type_report(code: str, every: Every, counts: list[Any]) -> dict[str, Any]:
    return {
        "meeting_type": code,
        "every": every,
        "required": sum(c.required for c in counts),
        "held": sum(c.held for c in counts),
        "overdue": sum(1 for c in counts if c.overdue),
        "periods": [
            {
                "period": c.period.label,
                "required": c.required,
                "held": c.held,
                "ended": c.ended,
                "overdue": c.overdue,
            }
            for c in counts
        ],
    }


def _roll_up(entries: list[dict[str, Any]]) -> None:
    """Each unit's ``units_behind_below``: walked from the deepest units up (entries come by depth)."""
    index = {e["unit_id"]: e for e in entries}
    for e in sorted(entries, key=lambda x: -x["depth"]):
        parent = index.get(e["parent_id"]) if e["depth"] > 0 else None
        if parent is not None:
            parent["units_behind_below"] += e["units_behind_below"] + (1 if e["behind"] else 0)


@routes.route(
    "GET",
    "/v1/units/{unit_id}/meetings/report",
    summary="Supervision: per unit of the subtree, meetings held vs required, overdue, attendance",
    tag="meetings",
    query=MeetingsReportQuery,
    response=SupervisionReport,
    responses={422: "quarter is before 1970"},
)
async def meetings_report(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(MeetingsReportQuery)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        unit = await require_unit(conn, p, request.match_info["unit_id"])
        tz_name = await console.timezone(conn, unit["id"])
        now = await receipts.now(conn)
        tz = ZoneInfo(tz_name)
        today = now.astimezone(tz).date()
        try:
            quarter = Quarter.of(today) if q.quarter is None else Quarter.parse(q.quarter)
        except ValueError as exc:
            raise invalid("query.quarter", str(exc)) from None
        unit_rows = await supervision.report_units(conn, unit["id"], tz_name)
        meeting_rows = await supervision.report_meetings(
            conn, unit["id"], _local_midnight(quarter.start, tz), _local_midnight(quarter.end, tz), tz_name
        )
    body = {
        "unit_id": unit["id"],
        "quarter": str(quarter),
        "timezone": tz_name,
        "as_of": now,
        "units": build_report(unit_rows, meeting_rows, quarter, today),
    }
    return json_response(SupervisionReport.model_validate(body).model_dump(mode="json"))
