"""/v1/units: the organisation tree (caller-chosen ids, upsert, cycles rejected)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.auth import require_unit, unit_visible
from notifier.api.keys import DEPS, principal
from notifier.api.problems import forbidden, invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Name, Strict, check_path_id
from notifier.db import units

routes = Router()


class UnitIn(Strict):
    name: Name
    parent_id: Id | None = None


class UnitOut(BaseModel):
    id: str
    name: str
    parent_id: str | None
    created_at: datetime
    updated_at: datetime


class UnitList(BaseModel):
    items: list[UnitOut]
    next_cursor: str | None


class UnitListQuery(Strict):
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: Id | None = None


@routes.route(
    "PUT",
    "/v1/units/{unit_id}",
    summary="Create or update a unit",
    tag="organisation",
    body=UnitIn,
    response=UnitOut,
    status=201,
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
        if not p.is_admin:
            if unit_id == p.scope_root:
                if current is not None and body.parent_id != current["parent_id"]:
                    raise forbidden("a key cannot move the unit it is bound to")
            elif body.parent_id is None:
                raise invalid("parent_id", "units you create must lie below your own unit")
        row = await units.upsert(conn, unit_id, body.name, body.parent_id)
    status = 201 if row["created"] else 200
    return json_response(UnitOut.model_validate(units.as_dict(row)).model_dump(mode="json"), status=status)


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
