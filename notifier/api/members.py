"""/v1/members: upsert one or many members (set-based), and read them."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import require_member
from notifier.api.keys import DEPS, principal
from notifier.api.principal import Principal
from notifier.api.problems import invalid_many
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.types import Email, Id, Name, Phone, QuietHours, Strict, TimeZone, check_path_id
from notifier.db import members, units
from notifier.db.pool import Connection

routes = Router()

MAX_BATCH = 10_000


class MemberIn(Strict):
    name: Name
    units: list[Id] = Field(min_length=1, max_length=100)
    phone: Phone | None = None
    email: Email | None = None
    timezone: TimeZone | None = None
    quiet_hours: QuietHours | None = None


class MemberBatchItem(MemberIn):
    id: Id


class MemberBatchIn(Strict):
    members: list[MemberBatchItem] = Field(min_length=1, max_length=MAX_BATCH)


class MemberOut(BaseModel):
    id: str
    name: str
    units: list[str]
    phone: str | None
    email: str | None
    timezone: str | None
    quiet_hours: QuietHours | None
    created_at: datetime
    updated_at: datetime


class MemberBatchOut(BaseModel):
    created: int
    updated: int


def _where(prefix: str, i: int, field: str) -> str:
    return f"{prefix}[{i}].{field}" if prefix else field


async def _upsert(
    conn: Connection, p: Principal, rows: list[MemberBatchItem], prefix: str
) -> dict[str, bool]:
    """Validate references for every row, then upsert them all, set-based.

    A unit-bound caller may create members in its units and change members all of whose units
    are in its reach. A member is shared between branches only by a caller who reaches both (an
    admin): an id another branch holds -- even one it is creating at this very moment -- is
    refused, never joined."""
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if row.id in seen:
            errors.append((_where(prefix, i, "id"), "duplicate member id in this batch"))
        seen.add(row.id)
    wanted = sorted({u for r in rows for u in r.units})
    root = p.scope_root
    known = await units.existing(conn, wanted) if root is None else await units.all_within(conn, wanted, root)
    for i, row in enumerate(rows):
        for j, unit_id in enumerate(row.units):
            if unit_id not in known:
                errors.append((_where(prefix, i, f"units[{j}]"), "unknown unit"))
    if errors:
        raise invalid_many(errors[:100])
    data = [r.model_dump() for r in rows]
    created = await members.insert_new(conn, data)
    existing = [r.id for r in rows if r.id not in created]
    if root is not None and existing:
        await members.lock(conn, existing)  # their units cannot change until we commit
        taken = set(existing) - await members.visible(conn, existing, root)
        shared = await members.not_owned(conn, existing, root)
        for i, row in enumerate(rows):
            if row.id in taken:
                errors.append((_where(prefix, i, "id"), "this member id is used outside your units"))
            elif row.id in shared:
                errors.append(
                    (
                        _where(prefix, i, "id"),
                        "this member also belongs to units outside your reach; only an admin may change it",
                    )
                )
        if errors:
            raise invalid_many(errors[:100])  # the transaction rolls back what was inserted
    reach = None if root is None else await units.subtree_ids(conn, root)
    await members.update_many(conn, [d for d in data if d["id"] not in created])
    await members.replace_memberships(conn, data, reach)
    return {r.id: r.id in created for r in rows}


@routes.route(
    "PUT",
    "/v1/members/{member_id}",
    summary="Create or update a member",
    tag="organisation",
    body=MemberIn,
    response=MemberOut,
    status=201,
    responses={200: Reply("updated"), 422: "a unit is unknown or outside your reach"},
    links={
        "get_member": {"member_id": "$request.path.member_id"},
        "list_contacts": {"member_id": "$request.path.member_id"},
        "add_contact": {"member_id": "$request.path.member_id"},
        "inbox": {"member_id": "$request.path.member_id"},
    },
)
async def put_member(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    member_id = check_path_id(request.match_info["member_id"], "member_id")
    body = call.body_as(MemberIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        before = await audit.member_units(conn, member_id)
        created = await _upsert(conn, p, [MemberBatchItem(id=member_id, **body.model_dump())], prefix="")
        row = await members.get(conn, member_id)
        assert row is not None
        await audit.record(
            conn,
            request,
            "member.put",
            "member",
            member_id,
            [*before, *row["units"]],
            {"created": created[member_id]},
        )
        root = p.scope_root
        visible = None if root is None else await units.all_within(conn, list(row["units"]), root)
    return json_response(
        MemberOut.model_validate(members.as_dict(row, visible)).model_dump(mode="json"),
        status=201 if created[member_id] else 200,
    )


@routes.route(
    "POST",
    "/v1/members:batch",
    summary="Create or update up to 10,000 members",
    tag="organisation",
    body=MemberBatchIn,
    response=MemberBatchOut,
    responses={422: "a member id repeats, or a unit is unknown or outside your reach"},
)
async def batch_members(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(MemberBatchIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        created = await _upsert(conn, p, body.members, prefix="members")
        # One entry for the batch (up to 10,000 members), about every unit it names.
        await audit.record(
            conn,
            request,
            "member.batch",
            "members",
            f"{len(created)} members",
            {u for m in body.members for u in m.units},
            {"members": len(created), "created": sum(1 for c in created.values() if c)},
        )
    n_created = sum(1 for c in created.values() if c)
    return json_response({"created": n_created, "updated": len(created) - n_created})


@routes.route(
    "GET", "/v1/members/{member_id}", summary="Get a member", tag="organisation", response=MemberOut
)
async def get_member(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    member_id = request.match_info["member_id"]
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        await require_member(conn, p, member_id)
        row = await members.get(conn, member_id)
        assert row is not None
        root = p.scope_root
        visible = None if root is None else await units.all_within(conn, list(row["units"]), root)
    return json_response(MemberOut.model_validate(members.as_dict(row, visible)).model_dump(mode="json"))
