"""Study points: the organisation's point rules, the members' ledgers, the branches' totals, and
the page views that measure how long a member had a lesson open (db/points.py).

Rules belong to an organisation (a root unit): an admin or a secretary of that root unit
manages them; any secretary or service of the organisation reads them. Nothing is seeded: an
organisation earns no points until it creates its rules (the README suggests a set, 学习强国's
published ones: ``lesson_read`` 1 point, at most 6 a day, after 60 s on the page; ``quiz_full``
2; ``quiz_partial`` 1).

Dwell is the server's: ``POST /v1/notices/{id}/views`` opens a view at the engine clock, ``PATCH``
of the view reports the page's visible time (which can only shorten the dwell) and closes it; a
lesson read with too little dwell earns nothing until a later report of the view reaches it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from notifier.api import audit
from notifier.api.auth import members_visible, require_member, require_unit, unit_visible
from notifier.api.keys import DEPS, principal
from notifier.api.lessons import Day
from notifier.api.notices import load_visible_notice
from notifier.api.principal import Principal
from notifier.api.problems import Problem, forbidden, invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Name, Strict, parse_uuid
from notifier.db import notices, points, receipts, recipients
from notifier.db.pool import Connection, Record
from notifier.db.quiet import member_timezone

routes = Router()

CODE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
LESSON_READ = "lesson_read"
# The longest range a points query covers, and the most ledger rows it lists.
MAX_DAYS = 2 * 366
LEDGER_MAX = 500

# Suggested rules (documented in the README; never applied by themselves).
EXAMPLES: list[dict[str, Any]] = [
    {"code": "lesson_read", "name": "阅读每日一课", "points": 1, "daily_cap": 6, "min_dwell_seconds": 60},
    {"code": "quiz_full", "name": "测验全对", "points": 2, "daily_cap": None, "min_dwell_seconds": 0},
    {"code": "quiz_partial", "name": "测验部分正确", "points": 1, "daily_cap": None, "min_dwell_seconds": 0},
]


class PointRuleChange(Strict):
    name: Name | None = None
    points: int = Field(ge=1, le=1000, description="points per action")
    daily_cap: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="at most this many points of the rule per member per local day",
    )
    min_dwell_seconds: int = Field(
        default=0,
        ge=0,
        le=86_400,
        description="seconds on the notice's page (server clock) before a read earns",
    )


class PointRuleIn(PointRuleChange):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"unit_id": "c", **EXAMPLES[0]}]}
    )

    unit_id: Id = Field(description="the organisation: a root unit")
    code: Code = Field(description="e.g. lesson_read, quiz_full, quiz_partial, exam_taken")


class PointRuleOut(BaseModel):
    id: str
    unit_id: str
    code: str
    name: str | None
    points: int
    daily_cap: int | None
    min_dwell_seconds: int
    created_at: dt.datetime
    updated_at: dt.datetime


class PointRuleList(BaseModel):
    items: list[PointRuleOut]


class RulesQuery(Strict):
    unit: Id | None = Field(default=None, description="the organisation (root unit); default: the caller's")


class RangeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    from_: Day | None = Field(
        default=None, alias="from", description="first local date; default: the 1st of this month"
    )
    to: Day | None = Field(
        default=None, description="local date after the last one (exclusive); default: tomorrow"
    )


class LedgerItem(BaseModel):
    code: str
    source: str
    points: int = Field(description="0: the day's cap was already reached")
    day: dt.date = Field(description="the member's local date of the award")
    awarded_at: dt.datetime


class CodeTotal(BaseModel):
    code: str
    points: int
    actions: int


class MemberPoints(BaseModel):
    member_id: str
    timezone: str
    from_: dt.date = Field(alias="from")
    to: dt.date
    total: int = Field(description="points in [from, to)")
    today: int = Field(description="points on the member's local today")
    month: int = Field(description="points this local month")
    by_code: list[CodeTotal]
    items: list[LedgerItem] = Field(description=f"newest first, at most {LEDGER_MAX}")
    truncated: bool


class UnitFigures(BaseModel):
    total: int
    members: int = Field(description="members of the unit's subtree")
    participants: int = Field(description="members with at least one point in the range")
    average: float | None = Field(description="total / members (null: no members)")
    participation: float | None = Field(description="participants / members (null: no members)")


class ChildPoints(UnitFigures):
    unit_id: str
    name: str


class UnitPoints(UnitFigures):
    unit_id: str
    organisation: str
    timezone: str
    from_: dt.date = Field(alias="from")
    to: dt.date
    units: list[ChildPoints] = Field(description="each child unit, its whole subtree")


class ViewIn(Strict):
    member_id: Id | None = None


class ViewUpdate(Strict):
    member_id: Id | None = None
    visible_seconds: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="how long the page says it was visible (only shortens the dwell)",
    )
    closed: bool = Field(default=False, description="true: the page was closed or hidden; the view ends now")


class ViewOut(BaseModel):
    id: str
    notice_id: str
    member_id: str
    opened_at: dt.datetime
    closed_at: dt.datetime | None
    dwell_seconds: float = Field(description="by the server's clock (no longer than the page's visible time)")
    points: int | None = Field(
        description="lesson_read points this notice earned the member (null: none yet)"
    )


def _rule_out(row: Record) -> dict[str, Any]:
    data = dict(row)
    data["id"] = str(data["id"])
    data["unit_id"] = data.pop("root_unit_id")
    return PointRuleOut.model_validate(data).model_dump(mode="json")


async def _organisation(conn: Connection, p: Principal) -> str | None:
    """The root unit of a scoped caller (None: an admin)."""
    if p.scope_root is None:
        return None
    root, _ = await points.unit_place(conn, p.scope_root)
    return root


def _manages(p: Principal, root: str) -> bool:
    return p.is_admin or (p.role == "secretary" and p.unit_id == root)


async def _visible_rule(conn: Connection, p: Principal, rule_id: str) -> Record:
    rid = parse_uuid(rule_id)
    row = None if rid is None else await points.get_rule(conn, rid)
    if row is None or (not p.is_admin and row["root_unit_id"] != await _organisation(conn, p)):
        raise not_found("point rule")
    return row


def _check_cap(body: PointRuleChange) -> None:
    if body.daily_cap is not None and body.daily_cap < body.points:
        raise invalid("daily_cap", "must be at least points (or null: no cap)")


@routes.route(
    "GET",
    "/v1/point-rules",
    summary="The point rules of an organisation",
    tag="points",
    query=RulesQuery,
    response=PointRuleList,
    responses={404: "unit is unknown or not your organisation"},
)
async def list_rules(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(RulesQuery)
    async with request.app[DEPS].pool.acquire() as conn:
        root = await _organisation(conn, p)
        if root is not None and q.unit is not None and q.unit != root:
            raise not_found("unit")
        rows = await points.list_rules(conn, q.unit if root is None else root)
    return json_response({"items": [_rule_out(r) for r in rows]})


@routes.route(
    "POST",
    "/v1/point-rules",
    summary="Create a point rule for an organisation (admin, or a secretary of its root unit)",
    tag="points",
    body=PointRuleIn,
    response=PointRuleOut,
    status=201,
    responses={
        409: "the organisation already has a rule with this code",
        422: "unit_id is unknown, outside your reach or not a root unit; daily_cap is below points",
    },
)
async def create_rule(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "secretary")
    body = call.body_as(PointRuleIn)
    _check_cap(body)
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        if not await unit_visible(conn, p, body.unit_id):
            raise invalid("unit_id", "unknown unit, or outside your units")
        root, _ = await points.unit_place(conn, body.unit_id)
        if root != body.unit_id:
            raise invalid("unit_id", f"must be an organisation (a root unit); this unit's is {root}")
        if not _manages(p, root):
            raise forbidden(
                "only an admin or a secretary of the organisation's root unit may manage its rules"
            )
        row = await points.insert_rule(
            conn, root, body.code, body.name, body.points, body.daily_cap, body.min_dwell_seconds
        )
        if row is None:
            raise Problem(
                409,
                "Conflict",
                "the organisation already has a rule with this code",
                type_="duplicate",
                errors=[{"field": "code", "message": "already in use"}],
            )
        out = _rule_out(row)
        await audit.record(
            conn, request, "point_rule.create", "point_rule", out["id"], [root], body.model_dump()
        )
    return json_response(out, status=201)


@routes.route(
    "GET",
    "/v1/point-rules/{rule_id}",
    summary="One point rule",
    tag="points",
    response=PointRuleOut,
    responses={404: "no such rule in your organisation"},
)
async def get_rule(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    async with request.app[DEPS].pool.acquire() as conn:
        row = await _visible_rule(conn, p, request.match_info["rule_id"])
    return json_response(_rule_out(row))


@routes.route(
    "PUT",
    "/v1/point-rules/{rule_id}",
    summary="Replace a point rule's name, points, cap and dwell (its code and organisation stay)",
    tag="points",
    body=PointRuleChange,
    response=PointRuleOut,
    responses={
        404: "no such rule in your organisation",
        422: "daily_cap is below points",
    },
)
async def put_rule(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "secretary")
    body = call.body_as(PointRuleChange)
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        row = await _visible_rule(conn, p, request.match_info["rule_id"])
        _check_cap(body)
        if not _manages(p, row["root_unit_id"]):
            raise forbidden(
                "only an admin or a secretary of the organisation's root unit may manage its rules"
            )
        new = await points.update_rule(
            conn, str(row["id"]), body.name, body.points, body.daily_cap, body.min_dwell_seconds
        )
        if new is None:
            raise not_found("point rule")
        out = _rule_out(new)
        await audit.record(
            conn,
            request,
            "point_rule.update",
            "point_rule",
            out["id"],
            [row["root_unit_id"]],
            body.model_dump(),
        )
    return json_response(out)


@routes.route(
    "DELETE",
    "/v1/point-rules/{rule_id}",
    summary="Delete a point rule (points already earned stay in the ledger)",
    tag="points",
    status=204,
    responses={404: "no such rule in your organisation"},
)
async def delete_rule(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "secretary")
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        row = await _visible_rule(conn, p, request.match_info["rule_id"])
        if not _manages(p, row["root_unit_id"]):
            raise forbidden(
                "only an admin or a secretary of the organisation's root unit may manage its rules"
            )
        await points.delete_rule(conn, str(row["id"]))
        await audit.record(
            conn,
            request,
            "point_rule.delete",
            "point_rule",
            str(row["id"]),
            [row["root_unit_id"]],
            {"code": row["code"]},
        )
    return web.Response(status=204)


def _range(q: RangeQuery, today: dt.date) -> tuple[dt.date, dt.date]:
    start = q.from_ if q.from_ is not None else today.replace(day=1)
    end = q.to if q.to is not None else today + dt.timedelta(days=1)
    if end <= start:
        raise invalid("query.to", "must be after from")
    if (end - start).days > MAX_DAYS:
        raise invalid("query.to", f"at most {MAX_DAYS} days after from")
    return start, end


async def _today(conn: Connection, tz: str) -> dt.date:
    return (await receipts.now(conn)).astimezone(ZoneInfo(tz)).date()


@routes.route(
    "GET",
    "/v1/members/{member_id}/points",
    summary="A member's points: the ledger and totals (today, this month, the range, per rule)",
    tag="points",
    query=RangeQuery,
    response=MemberPoints,
    responses={
        404: "member is unknown or outside your reach",
        422: "to is not after from, or the range is longer than two years",
    },
)
async def member_points(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    q = call.query_as(RangeQuery)
    member_id = request.match_info["member_id"]
    async with request.app[DEPS].pool.acquire() as conn:
        await require_member(conn, p, member_id)
        # A secretary or service sees the points of its own organisation only.
        root = await _organisation(conn, p)
        tz = await member_timezone(conn, member_id)
        today = await _today(conn, tz)
        start, end = _range(q, today)
        totals = await points.member_totals(conn, member_id, start, end, today, root)
        items = await points.ledger(conn, member_id, start, end, root, LEDGER_MAX + 1)
    out = MemberPoints.model_validate(
        {
            "member_id": member_id,
            "timezone": tz,
            "from": start,
            "to": end,
            "total": sum(r["total"] or 0 for r in totals),
            "today": sum(r["today"] or 0 for r in totals),
            "month": sum(r["month"] or 0 for r in totals),
            "by_code": [
                {"code": r["code"], "points": r["total"] or 0, "actions": r["actions"]}
                for r in totals
                if r["actions"]
            ],
            "items": [dict(r) for r in items[:LEDGER_MAX]],
            "truncated": len(items) > LEDGER_MAX,
        }
    )
    return json_response(out.model_dump(mode="json", by_alias=True))


def _figures(row: Record) -> dict[str, object]:
    n, total, part = int(row["members"]), int(row["total"]), int(row["participants"])
    return {
        "total": total,
        "members": n,
        "participants": part,
        "average": round(total / n, 4) if n else None,
        "participation": round(part / n, 4) if n else None,
    }


@routes.route(
    "GET",
    "/v1/units/{unit_id}/points",
    summary="Points of a unit and of each child unit: total, per-member average, participation",
    tag="points",
    query=RangeQuery,
    response=UnitPoints,
    responses={
        404: "unit is unknown or outside your units",
        422: "to is not after from, or the range is longer than two years",
    },
)
async def unit_points(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(RangeQuery)
    unit_id = request.match_info["unit_id"]
    async with request.app[DEPS].pool.acquire() as conn:
        await require_unit(conn, p, unit_id)
        root, tz = await points.unit_place(conn, unit_id)
        assert root is not None
        start, end = _range(q, await _today(conn, tz))
        rows = await points.unit_points(conn, unit_id, root, start, end)
    own = next(r for r in rows if r["unit_id"] is None)
    children = sorted((r for r in rows if r["unit_id"] is not None), key=lambda r: (r["name"], r["unit_id"]))
    out = UnitPoints.model_validate(
        {
            "unit_id": unit_id,
            "organisation": root,
            "timezone": tz,
            "from": start,
            "to": end,
            **_figures(own),
            "units": [{"unit_id": r["unit_id"], "name": r["name"], **_figures(r)} for r in children],
        }
    )
    return json_response(out.model_dump(mode="json", by_alias=True))


async def _viewer(
    conn: Connection, p: Principal, request: web.Request, member_id: str | None
) -> tuple[Record, str]:
    """The notice and the member a view is recorded for: a member key its own, an admin or a
    service any recipient in its reach (as read receipts are); the member must be a recipient."""
    if p.role == "member":
        if member_id is not None and member_id != p.member_id:
            raise not_found("recipient")
        nid = parse_uuid(request.match_info["notice_id"])
        notice = None if nid is None else await notices.get(conn, nid)
        if notice is None:
            raise not_found("notice")
        member_id = p.member_id
    elif member_id is None:
        raise invalid("member_id", "required when acting on behalf of a member")
    else:
        notice = (await load_visible_notice(conn, p, request.match_info["notice_id"], own=True)).row
        if member_id not in await members_visible(conn, p, [member_id]):
            raise not_found("recipient")
    assert member_id is not None
    if await recipients.get(conn, str(notice["id"]), member_id) is None:
        raise not_found("recipient")
    return notice, member_id


def _view_out(row: Record, earned: int | None) -> dict[str, object]:
    data = {**dict(row), "id": str(row["id"]), "notice_id": str(row["notice_id"]), "points": earned}
    return ViewOut.model_validate(data).model_dump(mode="json")


@routes.route(
    "POST",
    "/v1/notices/{notice_id}/views",
    summary="Open a page view of a notice (its dwell is measured from now, on the server's clock)",
    tag="points",
    body=ViewIn,
    response=ViewOut,
    status=201,
    responses={
        404: "the notice or the recipient is unknown or outside your reach",
        409: "the member has opened this notice too many times already",
        422: "member_id is required unless a member key records its own view",
    },
)
async def open_view(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "member")
    body = call.body_as(ViewIn)
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        notice, member_id = await _viewer(conn, p, request, body.member_id)
        row = await points.open_view(conn, str(notice["id"]), member_id)
        if row is None:
            raise Problem(
                409,
                "Conflict",
                f"at most {points.MAX_VIEWS} views of a notice per member",
                type_="too-many-views",
            )
        earned = await points.earned(conn, member_id, LESSON_READ, f"notice:{notice['id']}")
    return json_response(_view_out(row, earned), status=201)


@routes.route(
    "PATCH",
    "/v1/notices/{notice_id}/views/{view_id}",
    summary="Report a view's visible time or close it; a read lesson reaching its dwell earns lesson_read",
    tag="points",
    body=ViewUpdate,
    response=ViewOut,
    responses={
        404: "the notice, the recipient or the view is unknown or outside your reach",
        422: "member_id is required unless a member key reports its own view",
    },
)
async def update_view(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "member")
    body = call.body_as(ViewUpdate)
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        notice, member_id = await _viewer(conn, p, request, body.member_id)
        notice_id = str(notice["id"])
        vid = parse_uuid(request.match_info["view_id"])
        row = (
            None
            if vid is None
            else await points.update_view(conn, vid, notice_id, member_id, body.visible_seconds, body.closed)
        )
        if row is None:
            raise not_found("view")
        source = f"notice:{notice_id}"
        read = await recipients.get(conn, notice_id, member_id)
        if notice["kind"] == "lesson" and read is not None and read["read_at"] is not None:
            await points.award(conn, member_id, LESSON_READ, source)
        earned = await points.earned(conn, member_id, LESSON_READ, source)
    return json_response(_view_out(row, earned))
