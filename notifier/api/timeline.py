"""GET /v1/notices/{id}/recipients/{member_id}: everything that happened for one recipient, in order:
deliveries and reminders, receipts, and escalation events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from notifier.api.auth import members_visible
from notifier.api.keys import DEPS, principal
from notifier.api.notices import delivery_state, load_visible_notice
from notifier.api.problems import not_found
from notifier.api.routing import Call, Router, json_response
from notifier.db import escalations, recipients

routes = Router()

DELIVERIES = """
SELECT channel, step, state, wait_reason, attempts, error, created_at, updated_at, sent_at, next_attempt_at
FROM deliveries WHERE notice_id = $1 AND member_id = $2 ORDER BY created_at, step, channel"""


ALL_EVENTS = (
    "SELECT member_id, kind, detail, at FROM notice_events WHERE notice_id = $1 ORDER BY at, id LIMIT 5000"
)


class TimelineEntry(BaseModel):
    at: datetime
    type: Literal["delivery", "receipt", "event"]
    channel: str | None = None
    step: int | None = None
    state: str | None = None
    attempts: int | None = None
    error: str | None = None
    updated_at: datetime | None = None
    kind: str | None = None
    detail: dict[str, Any] | None = None


class Timeline(BaseModel):
    notice_id: str
    member_id: str
    status: str
    read_at: datetime | None
    entries: list[TimelineEntry]


@routes.route(
    "GET",
    "/v1/notices/{notice_id}/recipients/{member_id}",
    summary="One recipient's timeline: deliveries, reminders, receipts, escalation events",
    tag="notices",
    response=Timeline,
)
async def recipient_timeline(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    member_id = request.match_info["member_id"]
    async with deps.pool.acquire() as conn:
        notice = await load_visible_notice(conn, p, request.match_info["notice_id"])
        notice_id = str(notice["id"])
        if member_id not in await members_visible(conn, p, [member_id]):
            raise not_found("recipient")
        rec = await recipients.get(conn, notice_id, member_id)
        if rec is None:
            raise not_found("recipient")
        rows = await conn.fetch(DELIVERIES, notice_id, member_id)
        events = await escalations.events_for(conn, notice_id, member_id)
    entries: list[dict[str, Any]] = [
        {
            "at": d["created_at"],
            "type": "delivery",
            "channel": d["channel"],
            "step": d["step"],
            "state": delivery_state(d["state"], d["wait_reason"]),
            "attempts": d["attempts"],
            "error": d["error"],
            "updated_at": d["updated_at"],
        }
        for d in rows
    ]
    if rec["read_at"] is not None:
        entries.append(
            {"at": rec["read_at"], "type": "receipt", "kind": "read", "detail": {"via": rec["read_via"]}}
        )
    entries += [{"at": e["at"], "type": "event", "kind": e["kind"], "detail": e["detail"]} for e in events]
    entries.sort(key=lambda e: e["at"])
    body = Timeline(
        notice_id=notice_id,
        member_id=member_id,
        status="read" if rec["read_at"] else rec["dstatus"],
        read_at=rec["read_at"],
        entries=[TimelineEntry.model_validate(e) for e in entries],
    )
    return json_response(body.model_dump(mode="json", exclude_none=True))


class NoticeEvent(BaseModel):
    at: datetime
    kind: str
    member_id: str | None
    detail: dict[str, Any]


class NoticeEvents(BaseModel):
    items: list[NoticeEvent]


@routes.route(
    "GET",
    "/v1/notices/{notice_id}/events",
    summary="Escalation steps fired, steps that reached nobody, recall, expiry",
    tag="notices",
    response=NoticeEvents,
)
async def notice_events(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        notice = await load_visible_notice(conn, p, request.match_info["notice_id"])
        rows = await conn.fetch(ALL_EVENTS, notice["id"])
    items = [
        {"at": r["at"], "kind": r["kind"], "member_id": r["member_id"], "detail": r["detail"]} for r in rows
    ]
    return json_response(NoticeEvents.model_validate({"items": items}).model_dump(mode="json"))
