"""GET /v1/notices/{id}/recipients/{member_id}: everything that happened for one recipient, in order:
deliveries and reminders, receipts, and escalation events (the notice's own and those naming the
member). GET /v1/notices/{id}/events: the notice's events, in keyset pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.auth import members_visible
from notifier.api.cursors import decode_time_cursor, encode_time_cursor, event_id
from notifier.api.keys import DEPS, principal
from notifier.api.notices import delivery_state, load_visible_notice
from notifier.api.problems import not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Strict
from notifier.db import recipients, timeline

routes = Router()


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
        view = await load_visible_notice(conn, p, request.match_info["notice_id"])
        notice_id = view.id
        if member_id not in await members_visible(conn, p, [member_id]):
            raise not_found("recipient")
        rec = await recipients.get(conn, notice_id, member_id)
        if rec is None:
            raise not_found("recipient")
        rows = await timeline.recipient_deliveries(conn, notice_id, member_id)
        events = await timeline.for_recipient(conn, notice_id, member_id, whole=view.slice_root is None)
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
    members: int = Field(
        default=0, description="how many members an aggregated event (e.g. not_reached) names"
    )
    detail: dict[str, Any]


class NoticeEvents(BaseModel):
    items: list[NoticeEvent]
    next_cursor: str | None


class EventsQuery(Strict):
    limit: int = Field(default=1000, ge=1, le=5000)
    cursor: str | None = Field(default=None, max_length=400)


@routes.route(
    "GET",
    "/v1/notices/{notice_id}/events",
    summary="Escalation steps fired, steps that reached nobody, recall, expiry (keyset pages)",
    tag="notices",
    query=EventsQuery,
    response=NoticeEvents,
    responses={422: "cursor is not a next_cursor this API returned"},
)
async def notice_events(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(EventsQuery)
    after = decode_time_cursor(q.cursor, event_id)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        view = await load_visible_notice(conn, p, request.match_info["notice_id"])
        rows = await timeline.page(conn, view.id, after, q.limit + 1, view.slice_root)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = [
        {
            "at": r["at"],
            "kind": r["kind"],
            "member_id": r["member_id"],
            "members": r["members"],
            "detail": r["detail"],
        }
        for r in rows
    ]
    cursor = encode_time_cursor(rows[-1]["at"], rows[-1]["id"]) if more else None
    return json_response(
        NoticeEvents.model_validate({"items": items, "next_cursor": cursor}).model_dump(mode="json")
    )
