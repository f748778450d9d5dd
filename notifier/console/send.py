"""Send a DING: the form, a live recipient count, the confirm step and the send.

The send goes through the API's own creation path (``POST /v1/notices``' handler) as the
session's principal, with the form's idempotency key -- a fresh one per form render, carried
through the confirm step -- as the Idempotency-Key: a double click, a reload of the confirm
post or a second tab sends once and lands on the same notice.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from multidict import MultiDictProxy
from pydantic import ValidationError

from notifier.api import notices as notices_api
from notifier.api import policies as policies_api
from notifier.api.auth import members_visible
from notifier.api.keys import DEPS
from notifier.api.principal import Principal
from notifier.api.problems import Problem
from notifier.console.apicall import call
from notifier.console.pages import TZ, page, render, t
from notifier.console.session import Session
from notifier.console.units import tree_order
from notifier.db import console, units
from notifier.db.quiet import DEFAULT_TIMEZONE

PICKER_LIMIT = 500
IN_FLIGHT_TRIES = 50


async def _choices(request: web.Request, p: Principal) -> dict[str, Any]:
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        unit_rows = await units.list_units(conn, p.scope_root, None, PICKER_LIMIT)
        member_rows = await console.members_within(conn, p.scope_root, PICKER_LIMIT)
    policies = await call(request, p, policies_api.list_policies)
    return {
        "units": [
            {"id": u["id"], "name": u["name"], "depth": depth}
            for depth, u in tree_order([dict(r) for r in unit_rows], p.scope_root)
        ],
        "members": [{"id": m["id"], "name": m["name"]} for m in member_rows],
        "channels": deps.channels.ids(),
        "policies": sorted({item["name"] for item in policies["items"]}),
    }


def _values(form: MultiDictProxy[Any]) -> dict[str, Any]:
    def text(name: str) -> str:
        value = form.get(name, "")
        return value.strip() if isinstance(value, str) else ""

    def many(name: str) -> list[str]:
        return [v for v in form.getall(name, []) if isinstance(v, str) and v]

    return {
        "kind": text("kind") or "ding",
        "title": text("title"),
        "body": text("body"),
        "units": many("units"),
        "members": many("members"),
        "channels": many("channels"),
        "escalation": text("escalation"),
        "send_at": text("send_at"),
        "key": text("key") or str(uuid.uuid4()),
    }


def _notice_in(request: web.Request, values: dict[str, Any]) -> notices_api.NoticeIn:
    send_at = None
    if values["send_at"]:
        local = datetime.fromisoformat(values["send_at"])
        send_at = local.replace(tzinfo=ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE)))
    return notices_api.NoticeIn.model_validate(
        {
            "kind": values["kind"],
            "title": values["title"],
            "body": values["body"],
            "audience": {"units": values["units"], "members": values["members"]},
            "channels": values["channels"] or ["inapp"],
            "escalation": values["escalation"] or None,
            "send_at": send_at,
        }
    )


def _errors(request: web.Request, exc: ValidationError) -> list[str]:
    return [
        t(request, "send.error", field=".".join(str(x) for x in e["loc"]), message=e["msg"])
        for e in exc.errors()
    ]


@page()
async def send_form(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    values = {
        "kind": "ding",
        "title": "",
        "body": "",
        "units": [],
        "members": [],
        "channels": ["inapp"],
        "escalation": "",
        "send_at": "",
        "key": str(uuid.uuid4()),
    }
    return render(request, "send.html", {**await _choices(request, p), "values": values, "errors": []})


@page()
async def recipient_count(request: web.Request, session: Session) -> web.Response:
    """htmx: the number of people the picked audience reaches (only units and members in reach)."""
    p = session.principal
    picked_units = [u for u in request.query.getall("units", []) if u]
    picked_members = [m for m in request.query.getall("members", []) if m]
    count = await _count(request, p, picked_units, picked_members)
    return render(request, "_count.html", {"count": count})


async def _count(request: web.Request, p: Principal, unit_ids: list[str], member_ids: list[str]) -> int:
    async with request.app[DEPS].pool.acquire() as conn:
        root = p.scope_root
        known = set(unit_ids) if root is None else await units.all_within(conn, unit_ids, root)
        visible = await members_visible(conn, p, member_ids)
        return await console.audience_count(conn, sorted(known), sorted(visible))


@page()
async def send_post(request: web.Request, session: Session) -> web.StreamResponse:
    p = session.principal
    form = await request.post()
    values = _values(form)
    try:
        body = _notice_in(request, values)
    except (ValidationError, ValueError) as exc:
        errors = _errors(request, exc) if isinstance(exc, ValidationError) else [t(request, "send.bad_time")]
        context = {**await _choices(request, p), "values": values, "errors": errors}
        return render(request, "send.html", context, status=422)
    if form.get("step") != "send":
        count = await _count(request, p, values["units"], values["members"])
        return render(request, "send_confirm.html", {"values": values, "count": count, "notice": body})
    headers = {notices_api.IDEMPOTENCY_HEADER: values["key"]}
    for _ in range(IN_FLIGHT_TRIES):
        try:
            created = await call(request, p, notices_api.create_notice, body=body, headers=headers)
            break
        except Problem as problem:  # the first click's send still commits: wait for its answer
            if problem.type != "idempotency-in-flight":
                raise
            await asyncio.sleep(0.2)
    else:
        raise Problem(409, "Conflict", t(request, "send.in_flight"))
    raise web.HTTPSeeOther(f"/console/notices/{created['id']}")


@page()
async def send_edit(request: web.Request, session: Session) -> web.Response:
    """Back from the confirm step to the form, with what was typed (and the same key)."""
    values = _values(await request.post())
    return render(
        request, "send.html", {**await _choices(request, session.principal), "values": values, "errors": []}
    )
