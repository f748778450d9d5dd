"""POST /v1/console-links: a one-time, short-lived sign-in link to the web console for a member.

Following the link signs the member in with the roles they hold (secretary of the units
``unit_secretaries`` lists; with none, their inbox at ``/m/``). The link is signed
(links.py) and its row is used at most once (db/console.py), so it cannot be replayed. An admin
may ask for any member; a service key only for members wholly inside its subtree (every unit of
theirs), else 404 -- as if the member did not exist.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import member_owned, require_member
from notifier.api.keys import DEPS, principal
from notifier.api.problems import not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Strict
from notifier.db import console
from notifier.db.pool import Connection
from notifier.links import console_link
from notifier.settings import Settings

routes = Router()


class ConsoleLinkIn(Strict):
    member_id: Id


class ConsoleLinkOut(BaseModel):
    url: str = Field(description="open it once, before expires_at; it signs the member in")
    member_id: str
    secretary_of: list[str] = Field(description="the units the session may act for (empty: the inbox only)")
    expires_at: datetime


async def mint(conn: Connection, settings: Settings, member_id: str | None) -> tuple[str, datetime]:
    """A new one-time link for ``member_id`` (None: the bootstrap admin): (url, expiry)."""
    row = await console.insert_link(
        conn, str(uuid.uuid4()), member_id, float(settings.console_link_ttl_seconds)
    )
    expires_at: datetime = row["expires_at"]
    url = console_link(
        settings.effective_public_url,
        settings.link_secret.get_secret_value().encode(),
        str(row["id"]),
        int(expires_at.timestamp()),
    )
    return url, expires_at


@routes.route(
    "POST",
    "/v1/console-links",
    summary="A one-time sign-in link to the web console for a member",
    tag="console",
    body=ConsoleLinkIn,
    response=ConsoleLinkOut,
    status=201,
    responses={404: "the member is unknown, or not wholly inside your units"},
)
async def create_console_link(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(ConsoleLinkIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        await require_member(conn, p, body.member_id)
        if not await member_owned(conn, p, body.member_id):
            raise not_found("member")
        url, expires_at = await mint(conn, deps.settings, body.member_id)
        units = await console.secretary_of(conn, body.member_id)
        await audit.record(
            conn, request, "console_link.create", "member", body.member_id, [p.scope_root, *units]
        )
    out = ConsoleLinkOut(url=url, member_id=body.member_id, secretary_of=units, expires_at=expires_at)
    return json_response(out.model_dump(mode="json"), status=201)
