"""/v1/api-keys: issue and revoke bearer tokens (shown once, stored hashed)."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel

from notifier.api.auth import members_visible, unit_visible
from notifier.api.keys import DEPS, principal
from notifier.api.problems import forbidden, invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Name, Strict, parse_uuid
from notifier.db import api_keys, members

routes = Router()


class ApiKeyIn(Strict):
    name: Name
    role: Literal["admin", "service", "secretary", "member"]
    unit_id: Id | None = None
    member_id: Id | None = None


class ApiKeyOut(BaseModel):
    id: str
    token: str
    name: str
    role: str
    unit_id: str | None
    member_id: str | None
    created_at: datetime


@routes.route(
    "POST",
    "/v1/api-keys",
    summary="Issue an API key (the token is shown once)",
    tag="access",
    body=ApiKeyIn,
    response=ApiKeyOut,
    status=201,
    responses={
        422: "role and binding disagree (service and secretary keys name a unit_id, member keys a "
        "member_id, admin keys neither), or the unit or member is unknown or outside your reach"
    },
    links={"revoke_api_key": {"key_id": "$response.body#/id"}},
)
async def create_api_key(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(ApiKeyIn)
    if body.role == "admin" and not p.is_admin:
        raise forbidden("only an admin may issue admin keys")
    if body.role in ("service", "secretary"):
        if body.unit_id is None:
            raise invalid("unit_id", f"a {body.role} key must be bound to a unit")
        if body.member_id is not None:
            raise invalid("member_id", f"a {body.role} key is bound to a unit, not a member")
    elif body.role == "member":
        if body.member_id is None:
            raise invalid("member_id", "a member key must be bound to a member")
        if body.unit_id is not None:
            raise invalid("unit_id", "a member key is bound to a member, not a unit")
    elif body.unit_id is not None or body.member_id is not None:
        raise invalid("role", "an admin key is bound to nothing")
    deps = request.app[DEPS]
    token = "ntf_" + secrets.token_urlsafe(32)
    async with deps.pool.acquire() as conn, conn.transaction():
        if body.unit_id is not None and not await unit_visible(conn, p, body.unit_id):
            raise invalid("unit_id", "unknown unit")
        if body.member_id is not None:
            if body.member_id not in await members_visible(conn, p, [body.member_id]):
                raise invalid("member_id", "unknown member")
            root = p.scope_root
            if root is not None and await members.not_owned(conn, [body.member_id], root):
                raise invalid("member_id", "this member also belongs to units outside your reach")
        row = await api_keys.insert(conn, body.name, body.role, body.unit_id, body.member_id, token, p.key_id)
    return json_response(
        ApiKeyOut(
            id=str(row["id"]),
            token=token,
            name=row["name"],
            role=row["role"],
            unit_id=row["unit_id"],
            member_id=row["member_id"],
            created_at=row["created_at"],
        ).model_dump(mode="json"),
        status=201,
    )


@routes.route("DELETE", "/v1/api-keys/{key_id}", summary="Revoke an API key", tag="access", status=204)
async def revoke_api_key(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        key_id = parse_uuid(request.match_info["key_id"])
        row = None
        if key_id is not None:
            row = await conn.fetchrow(
                "SELECT id, unit_id, member_id, role FROM api_keys WHERE id = $1", key_id
            )
        if row is None:
            raise not_found("api key")
        if not p.is_admin:
            root = p.scope_root
            allowed = root is not None and (
                (row["unit_id"] is not None and await unit_visible(conn, p, row["unit_id"]))
                or (
                    row["member_id"] is not None
                    and row["role"] == "member"
                    and row["member_id"] in await members_visible(conn, p, [row["member_id"]])
                    and not await members.not_owned(conn, [row["member_id"]], root)
                )
            )
            if not allowed or row["role"] == "admin":
                raise not_found("api key")
        await conn.execute(api_keys.REVOKE, row["id"])
    return web.Response(status=204)
