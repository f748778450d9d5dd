"""The audit log: ``record`` (the one way a handler writes an entry, inside its transaction) and
``GET /v1/audit`` (read, scoped like everything else: a unit-bound key reads the entries about its
subtree; an admin all).

An entry names the actor (key id -- none for the bootstrap admin token --, role, the key's unit or
member), the action and its target, the units it is about, when (``notifier_now()``) and the
caller's address as the server saw it (``X-Forwarded-For`` is not trusted). ``details`` holds
what helps an investigation and nothing secret: never a token, a message body or a full phone
number or address (``notifier.logs.mask``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.auth import require_unit
from notifier.api.cursors import NOT_OURS, decode_cursor, encode_cursor, event_id
from notifier.api.keys import DEPS, principal
from notifier.api.principal import Principal
from notifier.api.problems import invalid
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Strict, Timestamp
from notifier.db import audit, members
from notifier.db.pool import Connection, Record

routes = Router()


async def record(
    conn: Connection,
    request: web.Request,
    action: str,
    target_type: str,
    target_id: str,
    units: Iterable[str | None],
    details: dict[str, Any] | None = None,
) -> None:
    """Write one entry for the change being made on ``conn`` (call it inside the change's
    transaction, so the entry and the change commit or roll back together)."""
    await record_as(conn, request, principal(request), action, target_type, target_id, units, details)


async def record_as(
    conn: Connection,
    request: web.Request,
    p: Principal,
    action: str,
    target_type: str,
    target_id: str,
    units: Iterable[str | None],
    details: dict[str, Any] | None = None,
) -> None:
    """``record`` for an actor the request is not authenticated as yet: a console sign-in."""
    await audit.insert(
        conn,
        key_id=p.key_id,
        role=p.role,
        unit_id=p.unit_id,
        member_id=p.member_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        unit_ids=sorted({u for u in units if u is not None}),
        address=request.remote,
        details=details or {},
    )


async def member_units(conn: Connection, member_id: str) -> list[str]:
    """The units an entry about a member (its profile, contacts, keys) is about."""
    row = await members.get(conn, member_id)
    return [] if row is None else list(row["units"])


class AuditQuery(Strict):
    unit: Id | None = Field(default=None, description="entries about this unit's subtree (inside your units)")
    actor: str | None = Field(
        default=None,
        max_length=64,
        description="an API key id, 'admin' for the bootstrap admin token, or 'scheduler' (lesson runs)",
    )
    action: str | None = Field(default=None, max_length=64, description="e.g. notice.create, unit.put")
    from_: Timestamp | None = Field(default=None, alias="from", description="at or after (encode '+' as %2B)")
    to: Timestamp | None = Field(default=None, description="before this")
    limit: int = Field(default=100, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=400, description="next_cursor of the previous page")


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_key_id: str | None = Field(
        description="null: the bootstrap admin token (actor_role admin) or the scheduler (lesson runs)"
    )
    actor_role: str
    actor_unit_id: str | None
    actor_member_id: str | None
    action: str
    target_type: str
    target_id: str
    unit_ids: list[str]
    address: str | None
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


def _entry(row: Record) -> dict[str, Any]:
    data = dict(row)
    data["actor_key_id"] = None if row["actor_key_id"] is None else str(row["actor_key_id"])
    if isinstance(row["details"], str):
        data["details"] = json.loads(row["details"])
    return AuditEntry.model_validate(data).model_dump(mode="json")


def _before(cursor: str | None) -> int | None:
    raw = decode_cursor(cursor)
    if raw is None:
        return None
    number = event_id(raw)
    if number is None:
        raise invalid("query.cursor", NOT_OURS)
    return number


@routes.route(
    "GET",
    "/v1/audit",
    summary="The audit log: who changed what, when, from where (newest first)",
    tag="access",
    query=AuditQuery,
    response=AuditPage,
    responses={
        404: "unit is unknown or outside your units",
        422: "cursor is not a next_cursor this API returned",
    },
)
async def list_audit(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(AuditQuery)
    before = _before(q.cursor)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        if q.unit is not None:
            await require_unit(conn, p, q.unit)
        root = q.unit or p.scope_root
        rows = await audit.list_entries(
            conn,
            None if root is None else [root],
            actor=q.actor,
            action=q.action,
            since=q.from_,
            until=q.to,
            before_id=before,
            limit=q.limit + 1,
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return json_response(
        {
            "items": [_entry(r) for r in rows],
            "next_cursor": encode_cursor(str(rows[-1]["id"])) if more else None,
        }
    )
