"""/v1/escalation-policies: ordered reminder and notify steps, owned by a unit (or global).

Every caller that lists a policy can read it by id (global ones included); only its owner's keys
change it, and only an admin changes a global one. A policy a unit names as its
``default_policy`` cannot be deleted or renamed from under it (409, naming the units).
Keys that are not an admin's space steps at least ``escalation_min_step_seconds`` apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import unit_visible
from notifier.api.keys import DEPS, principal
from notifier.api.principal import Principal
from notifier.api.problems import Problem, forbidden, invalid, invalid_many, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Name, parse_uuid
from notifier.channels.registry import ChannelRegistry
from notifier.db import policies, units
from notifier.db.pool import Connection, Record
from notifier.domain.escalation import PolicyRules, crowded_steps, format_duration
from notifier.settings import Settings

routes = Router()


class PolicyIn(PolicyRules):
    name: Name


class StepOut(BaseModel):
    after: str
    remind: list[str]
    notify: list[str]
    channels: list[str]
    mode: str | None = None


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


async def _audit(conn: Connection, request: web.Request, action: str, row: Record) -> None:
    # A policy without a unit is the admin's, for everyone: an entry about no unit, which only
    # admins read.
    await audit.record(
        conn, request, action, "policy", str(row["id"]), [row["unit_id"]], {"name": row["name"]}
    )


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


def check_spacing(rules: PolicyRules, p: Principal, settings: Settings) -> None:
    """Keys that are not an admin's space steps at least the minimum interval apart."""
    minimum = settings.escalation_min_step_seconds
    if p.is_admin or not minimum:
        return
    crowded = crowded_steps(rules, minimum)
    if crowded:
        gap = format_duration(minimum)
        raise invalid_many(
            [
                (
                    f"steps[{i}].after",
                    f"must come at least {gap} after the previous step (the first: after the send; "
                    "a repeat's first: after the last step); only an admin may space steps closer",
                )
                for i in crowded
            ]
        )


async def _visible(conn: Connection, p: Principal, policy_id: str, *, for_update: bool = False) -> Record:
    """The policy, when the caller can see it: an admin every one, others their units' and the
    global ones (exactly what the list shows)."""
    pid = parse_uuid(policy_id)
    row = None if pid is None else await policies.get(conn, pid, for_update=for_update)
    if row is None:
        raise not_found("policy")
    if p.is_admin or row["unit_id"] is None:
        return row
    if not await unit_visible(conn, p, row["unit_id"]):
        raise not_found("policy")
    return row


async def _changeable(conn: Connection, p: Principal, policy_id: str) -> Record:
    """The policy, locked until commit, when the caller may change it."""
    row = await _visible(conn, p, policy_id, for_update=True)
    if row["unit_id"] is None and not p.is_admin:
        raise forbidden("only an admin may change a global policy")
    return row


async def _refuse_if_referenced(conn: Connection, row: Record, what: str) -> None:
    """A unit whose default_policy resolves to this policy would be left naming nothing."""
    named_by = await policies.referencing_units(conn, row["name"], row["unit_id"])
    if named_by:
        shown = ", ".join(named_by[:20]) + (" ..." if len(named_by) > 20 else "")
        raise Problem(
            409,
            "Conflict",
            f"cannot {what} this policy: it is the default_policy of unit(s) {shown}; "
            "change their default_policy first",
            type_="policy-in-use",
            errors=[{"field": "name", "message": f"default_policy of {shown}"}],
        )


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
    check_spacing(body, p, deps.settings)
    rules = body.model_dump(mode="json", exclude={"name"})
    try:
        async with deps.pool.acquire() as conn, conn.transaction():
            row = await policies.insert(conn, p.scope_root, body.name, rules["steps"], body.repeat)
            await _audit(conn, request, "policy.create", row)
    except asyncpg.UniqueViolationError:
        raise _conflict() from None
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
        rows = await policies.list_visible(conn, reach)
    return json_response({"items": [policy_out(r) for r in rows]})


@routes.route(
    "GET", "/v1/escalation-policies/{policy_id}", summary="One policy", tag="escalation", response=PolicyOut
)
async def get_policy(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        row = await _visible(conn, p, request.match_info["policy_id"])
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
    check_spacing(body, p, deps.settings)
    rules = body.model_dump(mode="json", exclude={"name"})
    try:
        async with deps.pool.acquire() as conn, conn.transaction():
            current = await _changeable(conn, p, request.match_info["policy_id"])
            if body.name != current["name"]:
                await _refuse_if_referenced(conn, current, "rename")
            row = await policies.update(conn, current["id"], body.name, rules["steps"], body.repeat)
            await _audit(conn, request, "policy.update", row)
    except asyncpg.UniqueViolationError:
        raise _conflict() from None
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
        current = await _changeable(conn, p, request.match_info["policy_id"])
        await _refuse_if_referenced(conn, current, "delete")
        await policies.delete(conn, current["id"])
        await _audit(conn, request, "policy.delete", current)
    return web.Response(status=204)
