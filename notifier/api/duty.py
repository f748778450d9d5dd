"""/v1/units/{unit_id}/duty and /on-duty: a unit's duty roster, and who is on duty at a moment.

A shift covers ``[starts_at, ends_at)``. PUT replaces the unit's whole roster (at most 1,000
shifts); the same member may not hold overlapping shifts in one unit. Shift members must belong to
the unit or a unit below it.

Who is on duty for a unit falls back up the tree: when nobody is on duty in the unit itself, the
nearest ancestor with anyone on duty answers (``fallback``: true). For a unit-bound key the walk
stops at the key's own unit: rosters above it are outside the key's reach and are never revealed,
so such a key may see "nobody" where an admin sees an ancestor's officer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from notifier.api import audit
from notifier.api.auth import members_visible, require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.problems import invalid, invalid_many
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Strict, Timestamp
from notifier.db import duty

routes = Router()

MAX_SHIFTS = 1000


class ShiftIn(Strict):
    member_id: Id
    starts_at: Timestamp
    ends_at: Timestamp = Field(description="exclusive: the member is off duty from this moment")

    @field_validator("ends_at")
    @classmethod
    def _after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        starts_at = info.data.get("starts_at")
        if starts_at is not None and value <= starts_at:
            raise ValueError("must be after starts_at")
        return value


class RosterIn(Strict):
    """The unit's whole roster: PUT replaces it ([] clears it)."""

    shifts: list[ShiftIn] = Field(max_length=MAX_SHIFTS)


class ShiftOut(BaseModel):
    member_id: str
    name: str
    starts_at: datetime
    ends_at: datetime


class RosterOut(BaseModel):
    unit_id: str
    shifts: list[ShiftOut]


class RosterQuery(Strict):
    from_: Timestamp | None = Field(
        default=None, alias="from", description="shifts ending after this (encode '+' as %2B)"
    )
    to: Timestamp | None = Field(default=None, description="shifts starting before this")


class OnDutyQuery(Strict):
    at: Timestamp | None = Field(default=None, description="default: now (encode '+' as %2B)")


class OnDutyOut(BaseModel):
    unit_id: str | None = Field(description="the unit whose roster answered; null: nobody on duty")
    requested_unit_id: str
    at: datetime
    members: list[ShiftOut]
    fallback: bool = Field(description="true when an ancestor's roster answered")


def _overlaps(shifts: list[ShiftIn]) -> dict[int, int]:
    """{later index: earlier index} for shifts of one member that overlap ([start, end) ranges)."""
    found: dict[int, int] = {}
    order = sorted(range(len(shifts)), key=lambda i: (shifts[i].member_id, shifts[i].starts_at, i))
    reach: tuple[str, datetime, int] | None = None  # member, latest end so far, and its shift
    for i in order:
        s = shifts[i]
        if reach is not None and reach[0] == s.member_id and s.starts_at < reach[1]:
            later, earlier = max(i, reach[2]), min(i, reach[2])
            found.setdefault(later, earlier)
        if reach is None or reach[0] != s.member_id or s.ends_at > reach[1]:
            reach = (s.member_id, s.ends_at, i)
    return found


def _overlap_message(earlier: int) -> str:
    return f"overlaps shifts[{earlier}] of the same member"


def _roster(unit_id: str, rows: list[Any]) -> dict[str, Any]:
    shifts = [ShiftOut.model_validate(dict(r)) for r in rows]
    return RosterOut(unit_id=unit_id, shifts=shifts).model_dump(mode="json")


@routes.route(
    "PUT",
    "/v1/units/{unit_id}/duty",
    summary="Replace a unit's duty roster",
    tag="duty",
    body=RosterIn,
    response=RosterOut,
    responses={
        422: "a shift ends before it starts, overlaps another shift of the same member, or names "
        "someone who is not a member of this unit or a unit below it"
    },
    links={"get_on_duty": {"unit_id": "$request.path.unit_id"}},
)
async def put_roster(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(RosterIn)
    overlaps = _overlaps(body.shifts)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        unit_id = (await require_unit(conn, p, request.match_info["unit_id"]))["id"]
        wanted = sorted({s.member_id for s in body.shifts})
        visible = await members_visible(conn, p, wanted)
        within = await duty.members_within(conn, unit_id, wanted)
        errors: list[tuple[str, str]] = []
        for i, shift in enumerate(body.shifts):
            if shift.member_id not in visible:
                errors.append((f"shifts[{i}].member_id", "unknown member"))
            elif shift.member_id not in within:
                errors.append((f"shifts[{i}].member_id", "must be a member of this unit or a unit below it"))
            if i in overlaps:
                errors.append((f"shifts[{i}]", _overlap_message(overlaps[i])))
        if errors:
            raise invalid_many(errors[:100])
        shifts = [duty.Shift(s.member_id, s.starts_at, s.ends_at) for s in body.shifts]
        try:
            await duty.replace_roster(conn, unit_id, shifts)
        except duty.OverlappingShifts as exc:  # the constraint is the guarantee; say it the same way
            raise invalid_many(
                [(f"shifts[{later}]", _overlap_message(earlier)) for later, earlier in exc.pairs[:100]]
                or [("shifts", "overlapping shifts of the same member")]
            ) from None
        await audit.record(
            conn, request, "roster.put", "roster", unit_id, [unit_id], {"shifts": len(body.shifts)}
        )
        rows = await duty.list_shifts(conn, unit_id, None, None)
    return json_response(_roster(unit_id, rows))


@routes.route(
    "GET",
    "/v1/units/{unit_id}/duty",
    summary="List a unit's duty shifts",
    tag="duty",
    query=RosterQuery,
    response=RosterOut,
    responses={422: "to is not after from"},
)
async def get_roster(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(RosterQuery)
    if q.from_ is not None and q.to is not None and q.to <= q.from_:
        raise invalid("query.to", "must be after from")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        unit_id = (await require_unit(conn, p, request.match_info["unit_id"]))["id"]
        rows = await duty.list_shifts(conn, unit_id, q.from_, q.to)
    return json_response(_roster(unit_id, rows))


@routes.route(
    "GET",
    "/v1/units/{unit_id}/on-duty",
    summary="Who is on duty for a unit (falling back to the nearest ancestor with anyone on duty)",
    tag="duty",
    query=OnDutyQuery,
    response=OnDutyOut,
)
async def get_on_duty(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(OnDutyQuery)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        unit_id = (await require_unit(conn, p, request.match_info["unit_id"]))["id"]
        # A unit-bound key's walk stops at its own unit: nothing above it is revealed.
        found = (await duty.on_duty(conn, [unit_id], q.at, stop_at=p.scope_root))[unit_id]
    out = OnDutyOut(
        unit_id=found.unit_id,
        requested_unit_id=unit_id,
        at=found.at,
        members=[ShiftOut.model_validate(dict(r)) for r in found.shifts],
        fallback=found.unit_id is not None and found.unit_id != unit_id,
    )
    return json_response(out.model_dump(mode="json"))
