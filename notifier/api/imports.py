"""/v1/imports/dingtalk: the organisation imported from DingTalk (admin only): the department
tree and users through the contacts API, applied by ``notifier.db.imports`` exactly as
``notifier import dingtalk`` does (idempotent; ``dry_run`` reports what would change).

It runs inside the request, bounded: fetching the organisation must end within
``import_request_timeout_seconds`` (120 s) or the answer is a 504 and nothing is written (the
fetch comes before the one transaction that applies it). The answer is the summary: how many
departments and users were fetched and what changed. An organisation too large for that is
imported with ``notifier import dingtalk``, which shows its progress as it goes."""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.keys import DEPS, principal
from notifier.api.problems import Problem, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Strict
from notifier.channels.base import ChannelError
from notifier.channels.dingtalk import DingTalkChannel
from notifier.channels.dingtalk_contacts import fetch_org
from notifier.db import imports
from notifier.domain.org_import import from_dingtalk

routes = Router()


class ImportIn(Strict):
    dry_run: bool = Field(default=False, description="report what would change, write nothing")
    root_unit: Id = Field(default="dingtalk", description="the unit DingTalk's root department is")


class Fetched(BaseModel):
    departments: int = Field(description="departments read from DingTalk (below the root)")
    users: int = Field(description="users read from DingTalk")


class ImportOut(BaseModel):
    dry_run: bool
    fetched: Fetched
    changes: dict[str, int] = Field(description="units, members, memberships and contacts changed")


@routes.route(
    "POST",
    "/v1/imports/dingtalk",
    summary="Import the organisation from DingTalk (admin)",
    tag="organisation",
    body=ImportIn,
    response=ImportOut,
    responses={
        404: "DingTalk (the dingtalk channel) is not configured on this deployment",
        502: "DingTalk refused or failed the contacts API calls (the reason is given)",
        504: "fetching the organisation took longer than the import's bound; nothing was written",
    },
)
async def import_dingtalk(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin")
    body = call.body_as(ImportIn)
    deps = request.app[DEPS]
    channel = deps.channels.get("dingtalk") if "dingtalk" in deps.channels else None
    if not isinstance(channel, DingTalkChannel):
        raise not_found("dingtalk channel")
    try:
        async with asyncio.timeout(deps.settings.import_request_timeout_seconds):
            departments, users = await fetch_org(channel, lambda _line: None)
    except ChannelError as exc:
        raise Problem(502, "Bad Gateway", f"DingTalk: {exc}", type_="provider-error") from None
    except TimeoutError:
        raise Problem(
            504,
            "Gateway Timeout",
            f"DingTalk's organisation was not fetched within "
            f"{deps.settings.import_request_timeout_seconds:g} s; nothing was written. "
            "Import it with `notifier import dingtalk`, which shows its progress.",
            type_="import-timeout",
        ) from None
    userids = [u["userid"] for u in users if isinstance(u.get("userid"), str)]
    changes = await imports.run(
        deps.pool,
        userids,
        lambda known: from_dingtalk(departments, users, known, body.root_unit),
        body.dry_run,
    )
    if not body.dry_run:
        async with deps.pool.acquire() as conn, conn.transaction():
            await audit.record(
                conn, request, "import.dingtalk", "organisation", body.root_unit, [None], changes
            )
    fetched = Fetched(departments=len(departments), users=len(users))
    out = ImportOut(dry_run=body.dry_run, fetched=fetched, changes=changes)
    return json_response(out.model_dump(mode="json"))
