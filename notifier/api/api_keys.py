"""/v1/api-keys: issue, list and revoke bearer tokens (shown once, stored hashed).

A key is revoked together with every key issued with it, and a key it issues expires no later
than itself: a leaked key cannot leave working keys behind.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field

from notifier.api import audit
from notifier.api.auth import members_visible, unauthorized, unit_visible
from notifier.api.cursors import decode_time_cursor, encode_time_cursor
from notifier.api.keys import DEPS, principal
from notifier.api.principal import Principal
from notifier.api.problems import forbidden, invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Name, Strict, parse_uuid
from notifier.db import api_keys, members, units
from notifier.db.pool import Connection, Record

routes = Router()


class ApiKeyIn(Strict):
    name: Name
    role: Literal["admin", "service", "secretary", "member"]
    unit_id: Id | None = None
    member_id: Id | None = None
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="when the key stops working; at most the issuing key's own expiry, which it "
        "inherits when omitted",
    )


class ApiKeyOut(BaseModel):
    id: str
    token: str
    name: str
    role: str
    unit_id: str | None
    member_id: str | None
    created_at: datetime
    expires_at: datetime | None


class ApiKeyInfo(BaseModel):
    """A key as listed: never its token (only a hash of it is stored)."""

    id: str
    name: str
    role: str
    unit_id: str | None
    member_id: str | None
    created_by: str | None = Field(
        description="the key that issued this one; null: the bootstrap admin token"
    )
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="refreshed at most once a minute")
    revoked_at: datetime | None


class ApiKeyPage(BaseModel):
    items: list[ApiKeyInfo]
    next_cursor: str | None


class ApiKeyQuery(Strict):
    include_revoked: bool = Field(default=False, description="also list revoked and expired keys")
    limit: int = Field(default=100, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=400, description="next_cursor of the previous page")


async def _reach(conn: Connection, p: Principal) -> list[str] | None:
    """The units whose keys the caller manages (None: every key, for an admin)."""
    root = p.scope_root
    return None if root is None else await units.subtree_ids(conn, root)


def _check_binding(p: Principal, body: ApiKeyIn) -> None:
    """Who may issue which role, and what each role is bound to (no database needed)."""
    # A service key issues keys for people (secretaries, members), not more keys like itself: a
    # leaked service key must not be able to copy itself.
    if body.role in ("admin", "service") and not p.is_admin:
        raise forbidden(f"only an admin may issue {body.role} keys")
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


def _expiry(p: Principal, body: ApiKeyIn) -> datetime | None:
    """A key expires no later than the key that issues it, and inherits that expiry by default."""
    expires_at = body.expires_at
    if p.expires_at is not None:
        if expires_at is None:
            expires_at = p.expires_at
        elif expires_at > p.expires_at:
            raise invalid(
                "expires_at", f"must not be later than your own key's expiry, {p.expires_at.isoformat()}"
            )
    return expires_at


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
    _check_binding(p, body)
    expires_at = _expiry(p, body)
    deps = request.app[DEPS]
    token = "ntf_" + secrets.token_urlsafe(32)
    async with deps.pool.acquire() as conn, conn.transaction():
        if body.expires_at is not None and body.expires_at <= await api_keys.now(conn):
            raise invalid("expires_at", "must be in the future")
        if body.unit_id is not None and not await unit_visible(conn, p, body.unit_id):
            raise invalid("unit_id", "unknown unit")
        if body.member_id is not None:
            if body.member_id not in await members_visible(conn, p, [body.member_id]):
                raise invalid("member_id", "unknown member")
            root = p.scope_root
            if root is not None and await members.not_owned(conn, [body.member_id], root):
                raise invalid("member_id", "this member also belongs to units outside your reach")
        row = await api_keys.insert(
            conn, body.name, body.role, body.unit_id, body.member_id, token, p.key_id, expires_at
        )
        if row is None:  # the calling key was revoked (or expired) while this request ran
            raise unauthorized("unknown or revoked token")
        await _audit(conn, request, "api_key.create", row)
    return json_response(
        ApiKeyOut(
            id=str(row["id"]),
            token=token,
            name=row["name"],
            role=row["role"],
            unit_id=row["unit_id"],
            member_id=row["member_id"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        ).model_dump(mode="json"),
        status=201,
    )


async def _audit(conn: Connection, request: web.Request, action: str, row: Record) -> None:
    """An entry about the key's unit, or its member's units (never its token)."""
    units = [row["unit_id"]]
    if row["member_id"] is not None:
        units += await audit.member_units(conn, row["member_id"])
    details = {
        "name": row["name"],
        "role": row["role"],
        "unit_id": row["unit_id"],
        "member_id": row["member_id"],
    }
    await audit.record(conn, request, action, "api_key", str(row["id"]), units, details)


def _info(row: Record) -> dict[str, Any]:
    return ApiKeyInfo(
        id=str(row["id"]),
        name=row["name"],
        role=row["role"],
        unit_id=row["unit_id"],
        member_id=row["member_id"],
        created_by=str(row["created_by"]) if row["created_by"] else None,
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    ).model_dump(mode="json")


@routes.route(
    "GET",
    "/v1/api-keys",
    summary="List the API keys you manage (never their tokens)",
    tag="access",
    query=ApiKeyQuery,
    response=ApiKeyPage,
    responses={422: "cursor is not a next_cursor this API returned"},
)
async def list_api_keys(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    q = call.query_as(ApiKeyQuery)
    after = decode_time_cursor(q.cursor, parse_uuid)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        rows = await api_keys.list_in_scope(
            conn, await _reach(conn, p), include_revoked=q.include_revoked, after=after, limit=q.limit + 1
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    cursor = encode_time_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return json_response({"items": [_info(r) for r in rows], "next_cursor": cursor})


@routes.route(
    "DELETE",
    "/v1/api-keys/{key_id}",
    summary="Revoke an API key and every key issued with it",
    tag="access",
    status=204,
)
async def revoke_api_key(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    deps = request.app[DEPS]
    key_id = parse_uuid(request.match_info["key_id"])
    async with deps.pool.acquire() as conn, conn.transaction():
        row = None if key_id is None else await api_keys.get_in_scope(conn, key_id, await _reach(conn, p))
        if row is None:
            raise not_found("api key")
        await api_keys.revoke_tree(conn, str(row["id"]))
        await _audit(conn, request, "api_key.revoke", row)
    return web.Response(status=204)


MAX_ROTATION_OVERLAP_SECONDS = 7 * 24 * 3600


class RotateIn(Strict):
    previous_valid_for: int = Field(
        default=0,
        ge=0,
        le=MAX_ROTATION_OVERLAP_SECONDS,
        description="seconds the old token keeps working beside the new one (0: it stops now)",
    )


class RotatedOut(ApiKeyOut):
    previous_valid_until: datetime = Field(description="the old token works until then")


@routes.route(
    "POST",
    "/v1/api-keys/{key_id}/rotate",
    summary="Rotate an API key: a new token (shown once); the old one works for previous_valid_for",
    tag="access",
    body=RotateIn,
    response=RotatedOut,
)
async def rotate_api_key(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(RotateIn)
    deps = request.app[DEPS]
    key_id = parse_uuid(request.match_info["key_id"])
    token = "ntf_" + secrets.token_urlsafe(32)
    async with deps.pool.acquire() as conn, conn.transaction():
        row = None if key_id is None else await api_keys.get_in_scope(conn, key_id, await _reach(conn, p))
        if row is None:
            raise not_found("api key")
        until = await api_keys.now(conn) + timedelta(seconds=body.previous_valid_for)
        if row["expires_at"] is not None:
            until = min(until, row["expires_at"])
        rotated = await api_keys.rotate(conn, str(row["id"]), token, until)
        if rotated is None:  # revoked or expired: nothing to rotate
            raise not_found("api key")
        await _audit(conn, request, "api_key.rotate", rotated)
    return json_response(
        RotatedOut(
            id=str(rotated["id"]),
            token=token,
            name=rotated["name"],
            role=rotated["role"],
            unit_id=rotated["unit_id"],
            member_id=rotated["member_id"],
            created_at=rotated["created_at"],
            expires_at=rotated["expires_at"],
            previous_valid_until=rotated["previous_valid_until"],
        ).model_dump(mode="json")
    )
