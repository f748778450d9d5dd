"""/v1/escalation-policies: ordered reminder and notify steps, owned by a unit (or global)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.auth import unit_visible
from notifier.api.keys import DEPS, principal
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Name, parse_uuid
from notifier.channels.registry import ChannelRegistry
from notifier.db import escalations, units
from notifier.db.pool import Connection, Record
from notifier.domain.escalation import PolicyRules, format_duration

routes = Router()


class PolicyIn(PolicyRules):
    name: Name


class StepOut(BaseModel):
    after: str
    remind: list[str]
    notify: list[str]
    channels: list[str]


class PolicyOut(BaseModel):
    id: str
    name: str
    unit_id: str | None = Field(description="the owning unit; null for a global policy made by an admin")
    steps: list[StepOut]
    repeat: int
    created_at: datetime
    updated_at: datetime


class PolicyList(BaseModel):
    items: list[PolicyOut]


def policy_out(row: Record) -> dict[str, Any]:
    steps = [{**s, "after": format_duration(float(s["after"]))} for s in row["steps"]]
    return PolicyOut(
        id=str(row["id"]),
        name=row["name"],
        unit_id=row["unit_id"],
        steps=steps,
        repeat=row["repeat"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    ).model_dump(mode="json")


def check_channels(rules: PolicyRules, channels: ChannelRegistry) -> None:
    for i, step in enumerate(rules.steps):
        for field_name in ("remind", "channels"):
            for j, channel in enumerate(getattr(step, field_name)):
                if channel not in channels:
                    raise invalid(
                        f"steps[{i}].{field_name}[{j}]",
                        f"unknown channel; one of {', '.join(channels.ids())}",
                    )


async def _owned(conn: Connection, p: Principal, policy_id: str) -> Record:
    row = await conn.fetchrow(
        escalations.POLICY_GET, parse_uuid(policy_id) or "00000000-0000-0000-0000-000000000000"
    )
    if row is None:
        raise not_found("policy")
    if p.is_admin:
        return row
    if row["unit_id"] is None or not await unit_visible(conn, p, row["unit_id"]):
        raise not_found("policy")
    return row


def _conflict() -> Problem:
    return Problem(
        409,
        "Conflict",
        "a policy with this name already exists for this unit",
        type_="duplicate",
        errors=[{"field": "name", "message": "already in use"}],
    )


@routes.route(
    "POST",
    "/v1/escalation-policies",
    summary="Create an escalation policy",
    tag="escalation",
    body=PolicyIn,
    response=PolicyOut,
    status=201,
    responses={
        409: "a policy with this name already exists for this unit",
        422: "a step names a channel this deployment does not configure, or neither reminds nor "
        "notifies anyone; steps are out of order; the unit is unknown or outside your reach",
    },
    links={
        "get_policy": {"policy_id": "$response.body#/id"},
        "put_policy": {"policy_id": "$response.body#/id"},
        "delete_policy": {"policy_id": "$response.body#/id"},
    },
)
async def create_policy(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(PolicyIn)
    deps = request.app[DEPS]
    check_channels(body, deps.channels)
    rules = body.model_dump(mode="json", exclude={"name"})
    try:
        async with deps.pool.acquire() as conn:
            row = await conn.fetchrow(
                escalations.POLICY_INSERT, p.scope_root, body.name, rules["steps"], body.repeat
            )
    except asyncpg.UniqueViolationError:
        raise _conflict() from None
    assert row is not None
    return json_response(
        policy_out(row), status=201, headers={"Location": f"/v1/escalation-policies/{row['id']}"}
    )


@routes.route(
    "GET",
    "/v1/escalation-policies",
    summary="Policies you can use",
    tag="escalation",
    response=PolicyList,
    links={"get_policy": {"policy_id": "$response.body#/items/0/id"}},
)
async def list_policies(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    root = p.scope_root
    async with deps.pool.acquire() as conn:
        reach = None if root is None else await units.subtree_ids(conn, root)
        rows = await conn.fetch(escalations.POLICY_LIST, reach)
    return json_response({"items": [policy_out(r) for r in rows]})


@routes.route(
    "GET", "/v1/escalation-policies/{policy_id}", summary="One policy", tag="escalation", response=PolicyOut
)
async def get_policy(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        row = await _owned(conn, p, request.match_info["policy_id"])
    return json_response(policy_out(row))


@routes.route(
    "PUT",
    "/v1/escalation-policies/{policy_id}",
    summary="Replace a policy (notices already running keep their snapshot)",
    tag="escalation",
    body=PolicyIn,
    response=PolicyOut,
    responses={
        409: "another policy of this unit has this name, or a unit names this one as its default_policy",
        422: "a step names a channel this deployment does not configure, or neither reminds nor "
        "notifies anyone; steps are out of order",
    },
)
async def put_policy(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(PolicyIn)
    deps = request.app[DEPS]
    check_channels(body, deps.channels)
    rules = body.model_dump(mode="json", exclude={"name"})
    try:
        async with deps.pool.acquire() as conn, conn.transaction():
            current = await _owned(conn, p, request.match_info["policy_id"])
            if current["unit_id"] is None and not p.is_admin:
                raise not_found("policy")
            row = await conn.fetchrow(
                escalations.POLICY_UPDATE, current["id"], body.name, rules["steps"], body.repeat
            )
    except asyncpg.UniqueViolationError:
        raise _conflict() from None
    assert row is not None
    return json_response(policy_out(row))


@routes.route(
    "DELETE",
    "/v1/escalation-policies/{policy_id}",
    summary="Delete a policy",
    tag="escalation",
    status=204,
    responses={409: "a unit names this policy as its default_policy"},
)
async def delete_policy(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        current = await _owned(conn, p, request.match_info["policy_id"])
        await conn.execute(escalations.POLICY_DELETE, current["id"])
    return web.Response(status=204)
