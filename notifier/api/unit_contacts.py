"""/v1/units/{unit_id}/contacts: where a unit as a whole is reached -- its group chat's robot --
for unit-level channels (``dingtalk_robot``): a notice naming the unit in its audience and the
channel in its channels is posted there once. Targets are validated by the channel; secrets are
never shown back (only that one is set)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.problems import invalid_many
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Strict
from notifier.channels.base import InvalidTarget
from notifier.db import unit_posts
from notifier.db.pool import Record

routes = Router()


class UnitContactIn(Strict):
    channel: str = Field(min_length=1, max_length=32)
    target: dict[str, Any]


class UnitContactsIn(Strict):
    items: list[UnitContactIn] = Field(max_length=8, description="at most one per channel")


class UnitContactOut(BaseModel):
    id: str
    channel: str
    target: dict[str, Any] = Field(description="the target with its secrets masked")
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None


class UnitContactsOut(BaseModel):
    unit_id: str
    items: list[UnitContactOut]


def _masked(target: Any) -> dict[str, Any]:
    if not isinstance(target, dict):
        return {}
    return {k: (v[:4] + "…" if isinstance(v, str) and len(v) > 8 else "…") for k, v in target.items()}


def _out(unit_id: str, rows: list[Record]) -> dict[str, Any]:
    items = [
        UnitContactOut(
            id=str(r["id"]),
            channel=r["channel"],
            target=_masked(r["target"]),
            created_at=r["created_at"],
            disabled_at=r["disabled_at"],
            disabled_reason=r["disabled_reason"],
        )
        for r in rows
    ]
    return UnitContactsOut(unit_id=unit_id, items=items).model_dump(mode="json")


@routes.route(
    "PUT",
    "/v1/units/{unit_id}/contacts",
    summary="Set a unit's group contacts (its group chat robot)",
    tag="organisation",
    body=UnitContactsIn,
    response=UnitContactsOut,
    responses={
        422: "a channel is not a unit-level channel this deployment configures, is named twice, "
        "or its target is not valid for it"
    },
)
async def put_unit_contacts(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(UnitContactsIn)
    deps = request.app[DEPS]
    unit_level = [c.id for c in deps.channels if c.capabilities.unit_level]
    errors: list[tuple[str, str]] = []
    items: list[tuple[str, Any]] = []
    for i, item in enumerate(body.items):
        if item.channel not in unit_level:
            errors.append(
                (
                    f"items[{i}].channel",
                    f"not a unit-level channel; one of {', '.join(unit_level) or '(none)'}",
                )
            )
            continue
        if any(c == item.channel for c, _ in items):
            errors.append((f"items[{i}].channel", "named twice"))
            continue
        try:
            items.append((item.channel, deps.channels.get(item.channel).validate_target(item.target)))
        except InvalidTarget as exc:
            errors.append((f"items[{i}].{exc.field}", str(exc)))
    if errors:
        raise invalid_many(errors)
    async with deps.pool.acquire() as conn, conn.transaction():
        unit_id = (await require_unit(conn, p, request.match_info["unit_id"]))["id"]
        rows = await unit_posts.put_contacts(conn, unit_id, items)
        await audit.record(
            conn,
            request,
            "unit_contacts.put",
            "unit",
            unit_id,
            [unit_id],
            {"channels": [c for c, _ in items]},
        )
    return json_response(_out(unit_id, rows))


@routes.route(
    "GET",
    "/v1/units/{unit_id}/contacts",
    summary="A unit's group contacts",
    tag="organisation",
    response=UnitContactsOut,
)
async def get_unit_contacts(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        unit_id = (await require_unit(conn, p, request.match_info["unit_id"]))["id"]
        rows = await unit_posts.list_contacts(conn, unit_id)
    return json_response(_out(unit_id, rows))
