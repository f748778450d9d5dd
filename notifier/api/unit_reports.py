"""GET /v1/units/{id}/report: the committee's view over time -- for the unit and each child
unit, the notices that reached it, their recipients, read rate, median time to read, the share
read within 5 / 30 / 60 minutes and the lessons' read rate, in total and per day, week or month
of the unit's time zone. Read from the report slots (db/unit_reports.py), never from recipients.

A notice belongs to the bucket of its time (send_at, else created_at); its reads count there
whenever they come, so a week's read rate is "of the notices of that week, how many were read".
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.lessons import Day
from notifier.api.problems import invalid
from notifier.api.routing import Call, Router, json_response
from notifier.api.unit_counts import Bucket
from notifier.db import unit_counts, unit_reports
from notifier.db.pool import Record

routes = Router()

# The longest range a report covers: two years of days, ten years of weeks or months.
MAX_DAYS = {"day": 2 * 366, "week": 10 * 366, "month": 10 * 366}


class ReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    from_: Day = Field(alias="from", description="first local date of the report (the unit's time zone)")
    to: Day = Field(description="local date after the last one (exclusive)")
    bucket: Literal["day", "week", "month"] = Field(
        default="week", description="series buckets: days, ISO weeks (from Monday) or calendar months"
    )
    kind: Literal["ding", "notice", "lesson", "meeting"] | None = Field(
        default=None,
        description="only notices of this kind (lessons_read_rate is of the lessons in any case)",
    )


class Figures(BaseModel):
    notices: int = Field(description="notices that reached the unit's subtree")
    recipients: int = Field(
        description="recipients of those notices in the subtree (a member once per notice)"
    )
    read: int
    read_rate: float | None = Field(description="read / recipients; null when nobody was sent anything")
    median_read: Bucket | None = Field(
        description="the time-to-read bucket by which half the recipients had read; null while fewer have"
    )
    read_within_5m: float | None = Field(description="share of the recipients who read within 5 minutes")
    read_within_30m: float | None
    read_within_60m: float | None
    lessons_read_rate: float | None = Field(description="read / recipients of the daily lessons")


class Point(Figures):
    start: dt.date = Field(description="first local date of the bucket (it may lie before from)")


class ReportUnit(Figures):
    unit_id: str
    name: str
    own: bool = Field(description="true: the unit the report is of; false: one of its child units")
    series: list[Point]


class UnitReport(BaseModel):
    unit_id: str
    timezone: str = Field(description="the unit's effective time zone, in which the dates are read")
    from_: dt.date = Field(alias="from")
    to: dt.date
    bucket: Literal["day", "week", "month"]
    kind: str | None
    units: list[ReportUnit]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def figures(row: Record | None) -> dict[str, Any]:
    """The report's figures from a row of sums (None: nothing in that bucket)."""

    def get(column: str) -> int:
        return 0 if row is None else int(row[column] or 0)

    recipients, read = get("recipients"), get("read")
    buckets = [get(c) for c, _ in unit_counts.BUCKETS]
    return {
        "notices": get("notices"),
        "recipients": recipients,
        "read": read,
        "read_rate": _rate(read, recipients),
        "median_read": unit_counts.median_bucket(recipients, buckets),
        "read_within_5m": _rate(sum(buckets[:2]), recipients),
        "read_within_30m": _rate(sum(buckets[:4]), recipients),
        "read_within_60m": _rate(sum(buckets[:5]), recipients),
        "lessons_read_rate": _rate(get("lesson_read"), get("lesson_recipients")),
    }


def bucket_starts(start: dt.date, end: dt.date, bucket: str) -> list[dt.date]:
    """The first date of every bucket that holds a date of [start, end)."""
    if bucket == "day":
        first = start
    elif bucket == "week":
        first = start - dt.timedelta(days=start.weekday())
    else:
        first = start.replace(day=1)
    out = []
    at = first
    while at < end:
        out.append(at)
        try:
            if bucket == "day":
                at += dt.timedelta(days=1)
            elif bucket == "week":
                at += dt.timedelta(days=7)
            else:
                at = (at.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        except OverflowError:  # the last bucket of year 9999
            break
    return out


@routes.route(
    "GET",
    "/v1/units/{unit_id}/report",
    summary="The unit and each child unit over time: notices, recipients, read rates, time to read",
    tag="organisation",
    query=ReportQuery,
    response=UnitReport,
    responses={
        404: "unit is unknown or outside your units",
        422: "to is not after from, or the range is longer than the bucket allows",
    },
)
async def unit_report(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    unit_id = request.match_info["unit_id"]
    q = call.query_as(ReportQuery)
    if q.to <= q.from_:
        raise invalid("query.to", "must be after from")
    if (q.to - q.from_).days > MAX_DAYS[q.bucket]:
        raise invalid("query.to", f"at most {MAX_DAYS[q.bucket]} days after from for bucket={q.bucket}")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        await require_unit(conn, p, unit_id)
        rows = await unit_reports.report(conn, unit_id, q.from_, q.to, q.bucket, q.kind)
    starts = bucket_starts(q.from_, q.to, q.bucket)
    units: dict[str, dict[str, Any]] = {}
    points: dict[str, dict[dt.date, Record]] = {}
    for r in rows:
        entry = units.setdefault(
            r["unit_id"], {"unit_id": r["unit_id"], "name": r["name"], "own": r["own"], **figures(None)}
        )
        if r["bucket"] is None:
            entry.update(figures(r))
        else:
            points.setdefault(r["unit_id"], {})[r["bucket"]] = r
    # Built as plain JSON values (the shape of UnitReport, which documents it): two years of days
    # for a unit and its children are thousands of points, and validating each was most of the time.
    empty = figures(None)
    for uid, entry in units.items():
        mine = points.get(uid, {})
        entry["series"] = [
            {"start": s.isoformat(), **(figures(mine[s]) if s in mine else empty)} for s in starts
        ]
    body = {
        "unit_id": unit_id,
        "timezone": rows[0]["tz"],
        "from": q.from_.isoformat(),
        "to": q.to.isoformat(),
        "bucket": q.bucket,
        "kind": q.kind,
        "units": list(units.values()),
    }
    return json_response(body)
