"""GET /v1/units/{id}/report: the committee's view over time -- for the unit and each child
unit, the notices that reached it, their recipients, read rate, median time to read, the share
read within 5 / 30 / 60 minutes and the lessons' read rate, in total and per day, week or month
of the unit's time zone. Read from the report slots (db/unit_reports.py), never from recipients.

A notice belongs to the bucket of its time (send_at, else created_at); its reads count there
whenever they come, so a week's read rate is "of the notices of that week, how many were read".
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.lessons import Day
from notifier.api.notices import NoticeKind
from notifier.api.problems import invalid
from notifier.api.routing import Call, Router
from notifier.api.unit_counts import Bucket
from notifier.db import unit_reports

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
    kind: NoticeKind | None = Field(
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
        # The document is built by the statement (the shape of UnitReport, which documents it):
        # two years of days for a unit and its children are thousands of points.
        body = await unit_reports.report(conn, unit_id, q.from_, q.to, q.bucket, q.kind)
    return web.Response(body=body, content_type="application/json")
