"""/v1/units: the organisation tree (caller-chosen ids, upsert, cycles rejected) and each unit's
settings: secretaries, local time zone, lesson times, default quiet hours, default escalation policy.

PUT replaces the whole unit: a setting left out is cleared (null, or no secretaries), so a caller
that sends only ``name`` and ``parent_id`` keeps working but resets the settings."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import require_unit, unit_visible
from notifier.api.keys import DEPS, principal
from notifier.api.problems import forbidden, invalid, invalid_many, not_found
from notifier.api.routing import Call, Link, Reply, Router, json_response
from notifier.api.types import ClockTime, Id, Name, QuietHours, Strict, TimeZone, check_path_id
from notifier.db import policies, units
from notifier.db.pool import Connection

routes = Router()


MAX_SECRETARIES = 100


class UnitIn(Strict):
    """The whole unit: PUT replaces it, and a setting left out is cleared (null / no secretaries)."""

    name: Name
    parent_id: Id | None = None
    secretaries: list[Id] = Field(
        default_factory=list,
        max_length=MAX_SECRETARIES,
        description="member ids; each must be a member of this unit itself",
    )
    timezone: TimeZone | None = Field(default=None, description="IANA time zone; null: inherit")
    lesson_time: ClockTime | None = Field(default=None, description="local HH:MM of the daily lesson")
    lesson_reminder_time: ClockTime | None = Field(
        default=None, description="local HH:MM of the evening reminder to read it"
    )
    quiet_hours: QuietHours | None = Field(default=None, description="default for members below")
    default_policy: Name | None = Field(
        default=None,
        description="escalation policy for DINGs that name none: the unit's own policy of this name, "
        "else a global one; it must exist",
    )


class UnitOut(BaseModel):
    id: str
    name: str
    parent_id: str | None
    secretaries: list[str]
    timezone: str | None
    lesson_time: ClockTime | None
    lesson_reminder_time: ClockTime | None
    quiet_hours: QuietHours | None
    default_policy: str | None
    created_at: datetime
    updated_at: datetime


class UnitList(BaseModel):
    items: list[UnitOut]
    next_cursor: str | None


class UnitListQuery(Strict):
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: Id | None = None


def _unit_links(unit_id: str) -> dict[str, dict[str, str] | Link]:
    """Where a response naming a unit (``unit_id``: a runtime expression) leads; the notice link
    holds the fields that make any title and body a notice the unit can be sent (the in-app
    channel every deployment has, no schedule, no escalation)."""
    notice = {
        "kind": "notice",
        "audience": {"units": [unit_id], "members": []},
        "channels": ["inapp"],
        "escalation": None,
        "send_at": None,
        "expires_at": None,
    }
    return {
        "get_unit": {"unit_id": unit_id},
        "get_roster": {"unit_id": unit_id},
        "list_lessons": {"unit_id": unit_id},
        "create_notice": Link(body=notice),
    }


@routes.route(
    "PUT",
    "/v1/units/{unit_id}",
    summary="Create or update a unit",
    tag="organisation",
    body=UnitIn,
    response=UnitOut,
    status=201,
    responses={
        200: Reply("updated"),
        422: "parent_id is unknown, the unit itself or below it, or outside your reach; a secretary "
        "or the default_policy is unknown",
    },
    links=_unit_links("$response.body#/id"),
)
async def put_unit(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    unit_id = check_path_id(request.match_info["unit_id"], "unit_id")
    body = call.body_as(UnitIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        await units.lock_tree(conn)
        current = await units.get(conn, unit_id)
        if current is not None and not await unit_visible(conn, p, unit_id):
            raise not_found("unit")
        # An unchanged parent is no move: a key's own unit keeps a parent outside the key's reach.
        moves = current is None or body.parent_id != current["parent_id"]
        if body.parent_id is not None and moves:
            if body.parent_id == unit_id:
                raise invalid("parent_id", "a unit cannot be its own parent")
            if await units.get(conn, body.parent_id) is None or not await unit_visible(
                conn, p, body.parent_id
            ):
                raise invalid("parent_id", "unknown unit")
            if await units.is_within(conn, body.parent_id, unit_id):
                raise invalid("parent_id", "would create a cycle: the parent lies below this unit")
            if not await units.fits(conn, unit_id, body.parent_id):
                raise invalid(
                    "parent_id", f"a unit would lie more than {units.MAX_DEPTH} levels below the root"
                )
        if not p.is_admin:
            if unit_id == p.scope_root:
                if current is not None and body.parent_id != current["parent_id"]:
                    raise forbidden("a key cannot move the unit it is bound to")
            elif body.parent_id is None:
                raise invalid("parent_id", "units you create must lie below your own unit")
        await _check_secretaries(conn, unit_id, body.secretaries)
        await _check_default_policy(conn, unit_id, body.default_policy)
        created = await units.upsert(conn, unit_id, body.name, body.parent_id, _settings(body))
        await units.replace_secretaries(conn, unit_id, body.secretaries)
        # About the unit and where it hangs, before and after (a move is news to both parents).
        await audit.record(
            conn,
            request,
            "unit.put",
            "unit",
            unit_id,
            [unit_id, body.parent_id, None if current is None else current["parent_id"]],
            {"created": created, "parent_id": body.parent_id},
        )
        row = await units.get(conn, unit_id)
    assert row is not None
    return json_response(
        UnitOut.model_validate(units.as_dict(row)).model_dump(mode="json"), status=201 if created else 200
    )


def _settings(body: UnitIn) -> units.UnitSettings:
    quiet = body.quiet_hours
    return units.UnitSettings(
        timezone=body.timezone,
        lesson_time=body.lesson_time,
        lesson_reminder_time=body.lesson_reminder_time,
        quiet_start=quiet.start if quiet else None,
        quiet_end=quiet.end if quiet else None,
        default_policy=body.default_policy,
    )


async def _check_default_policy(conn: Connection, unit_id: str, name: str | None) -> None:
    """The name must resolve the way a DING from this unit resolves it (the unit's own policy,
    else a global one); the policy stays locked until commit, so it cannot vanish meanwhile."""
    if name is not None and await policies.resolve(conn, name, unit_id, for_share=True) is None:
        raise invalid("default_policy", "unknown escalation policy for this unit (its own, or a global one)")


async def _check_secretaries(conn: Connection, unit_id: str, secretaries: list[str]) -> None:
    """Every secretary is a direct member of the unit (an unknown id reads the same: no leak)."""
    if not secretaries:
        return
    members = await units.direct_members(conn, unit_id, secretaries)
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, member_id in enumerate(secretaries):
        if member_id in seen:
            errors.append((f"secretaries[{i}]", "duplicate member id"))
        elif member_id not in members:
            errors.append((f"secretaries[{i}]", "must be a member of this unit"))
        seen.add(member_id)
    if errors:
        raise invalid_many(errors)


@routes.route("GET", "/v1/units/{unit_id}", summary="Get a unit", tag="organisation", response=UnitOut)
async def get_unit(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        row = await require_unit(conn, p, request.match_info["unit_id"])
    return json_response(UnitOut.model_validate(units.as_dict(row)).model_dump(mode="json"))


@routes.route(
    "GET",
    "/v1/units",
    summary="List the units you can see",
    tag="organisation",
    query=UnitListQuery,
    response=UnitList,
    links=_unit_links("$response.body#/items/0/id"),
)
async def list_units(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(UnitListQuery)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        rows = await units.list_units(conn, p.scope_root, q.cursor, q.limit + 1)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return json_response(
        {
            "items": [UnitOut.model_validate(units.as_dict(r)).model_dump(mode="json") for r in rows],
            "next_cursor": rows[-1]["id"] if more else None,
        }
    )
