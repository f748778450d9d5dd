"""/v1/members/{member_id}/contacts: where a member is reached; targets validated by the channel."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import member_owned, require_member, require_member_owned
from notifier.api.keys import DEPS, principal
from notifier.api.problems import invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Strict, parse_uuid
from notifier.channels.base import InvalidTarget
from notifier.db import contacts
from notifier.logs import mask

routes = Router()

# What a contact row may hold, whatever the channel: the channels' own limits (2 KB URLs, 4 KB
# device tokens) fit well inside it, and a target is stored, sent and shown on every delivery.
MAX_TARGET_BYTES = 8192


class ContactIn(Strict):
    channel: str = Field(min_length=1, max_length=32)
    target: str | dict[str, Any]


class ContactOut(BaseModel):
    id: str
    member_id: str
    channel: str
    target: Any
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None


class ContactList(BaseModel):
    items: list[ContactOut]


@routes.route(
    "POST",
    "/v1/members/{member_id}/contacts",
    summary="Add a contact for a channel",
    tag="contacts",
    body=ContactIn,
    response=ContactOut,
    status=201,
    responses={
        422: "the channel is not one this deployment configures, is reached through another channel's "
        "contacts or is unit-level, or the target is not valid for it"
    },
    links={
        "delete_contact": {"member_id": "$request.path.member_id", "contact_id": "$response.body#/id"},
        "list_contacts": {"member_id": "$request.path.member_id"},
    },
)
async def add_contact(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(ContactIn)
    deps = request.app[DEPS]
    member_id = request.match_info["member_id"]
    if body.channel not in deps.channels:
        raise invalid("channel", f"unknown channel; one of {', '.join(deps.channels.ids())}")
    if deps.channels.get(body.channel).capabilities.unit_level:
        raise invalid(
            "channel", "a unit-level channel: it is the unit's contact (PUT /v1/units/{unit_id}/contacts)"
        )
    try:
        target = deps.channels.get(body.channel).validate_target(body.target)
    except InvalidTarget as exc:
        raise invalid(exc.field, str(exc)) from None
    if len(json.dumps(target, ensure_ascii=False, separators=(",", ":")).encode()) > MAX_TARGET_BYTES:
        raise invalid("target", f"target must be at most {MAX_TARGET_BYTES} bytes as JSON")
    async with deps.pool.acquire() as conn, conn.transaction():
        await require_member_owned(conn, p, member_id)
        through = await contacts.contact_channel(conn, body.channel)
        if through != body.channel:  # never used: say so rather than store it
            raise invalid(
                "channel", f"{body.channel} reaches members through their {through} contact; add that"
            )
        row = await contacts.add(conn, member_id, body.channel, target)
        shown = (
            target
            if isinstance(target, str)
            else next((v for v in target.values() if isinstance(v, str)), "")
        )
        await audit.record(
            conn,
            request,
            "contact.add",
            "contact",
            str(row["id"]),
            await audit.member_units(conn, member_id),
            {"member_id": member_id, "channel": body.channel, "target": mask(shown)},
        )
    return json_response(
        ContactOut.model_validate(contacts.as_dict(row)).model_dump(mode="json"),
        status=201 if row["created"] else 200,
    )


@routes.route(
    "GET",
    "/v1/members/{member_id}/contacts",
    summary="List a member's contacts",
    tag="contacts",
    response=ContactList,
)
async def list_contacts(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    deps = request.app[DEPS]
    member_id = request.match_info["member_id"]
    async with deps.pool.acquire() as conn:
        await require_member(conn, p, member_id)
        # Another branch sharing this member may see that it has a webhook, not the URL's secrets.
        owner = await member_owned(conn, p, member_id)
        rows = await contacts.list_for(conn, member_id)
    items = [ContactOut.model_validate(contacts.as_dict(r, owner)).model_dump(mode="json") for r in rows]
    return json_response({"items": items})


@routes.route(
    "DELETE",
    "/v1/members/{member_id}/contacts/{contact_id}",
    summary="Remove a contact",
    tag="contacts",
    status=204,
)
async def delete_contact(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    deps = request.app[DEPS]
    member_id = request.match_info["member_id"]
    contact_id = parse_uuid(request.match_info["contact_id"])
    async with deps.pool.acquire() as conn, conn.transaction():
        await require_member_owned(conn, p, member_id)
        removed = contact_id is not None and await contacts.delete(conn, member_id, contact_id)
        if removed:
            await audit.record(
                conn,
                request,
                "contact.delete",
                "contact",
                str(contact_id),
                await audit.member_units(conn, member_id),
                {"member_id": member_id},
            )
    if not removed:
        raise not_found("contact")
    return web.Response(status=204)
