"""GET /v1/members/{id}/notices: what a member received, when, and whether and when they read
it -- for a secretary's talk with a member who keeps missing DINGs.

Visible to a key whose subtree holds the member (a member shared with another branch too, as in
GET /v1/members/{id}), to the member's own key and to admins; anyone else gets 404. The notices
listed are those the caller may see (db/visibility.py): under the visibility of issue 8 a notice
that reached a member of a unit in the caller's subtree is one the caller may see -- except an
escalation summary, which is about someone else's notice: only its creating unit, those above
and admins see it (and the member's own key: it was sent to them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from notifier.api.auth import require_member
from notifier.api.cursors import decode_time_cursor, encode_time_cursor
from notifier.api.keys import DEPS, principal
from notifier.api.notices import NoticeKind
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Timestamp, parse_uuid
from notifier.db import history

routes = Router()


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    kind: NoticeKind | None = None
    from_: Timestamp | None = Field(default=None, alias="from", description="received at or after")
    to: Timestamp | None = Field(default=None, description="received before")
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=400)

    @model_validator(mode="after")
    def _range(self) -> HistoryQuery:
        if self.from_ is not None and self.to is not None and self.to <= self.from_:
            raise ValueError("to must be after from")
        return self


class HistoryItem(BaseModel):
    notice_id: str
    kind: str
    title: str
    state: str = Field(description="the notice's state (active, recalled ...)")
    summary: bool = Field(description="an escalation's summary about someone else's notice")
    received_at: datetime
    status: Literal["queued", "sent", "delivered", "failed", "cancelled", "read"]
    delivered_at: datetime | None
    read_at: datetime | None
    read_via: str | None
    seconds_to_read: float | None = Field(description="from receiving it to reading it")
    reminders: int = Field(description="reminders sent (escalation steps and remind-now presses)")


class HistoryPage(BaseModel):
    member_id: str
    items: list[HistoryItem]
    next_cursor: str | None


@routes.route(
    "GET",
    "/v1/members/{member_id}/notices",
    summary="What a member received and whether and when they read it (newest first)",
    tag="organisation",
    query=HistoryQuery,
    response=HistoryPage,
    responses={422: "cursor is not a next_cursor this API returned"},
)
async def member_history(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    q = call.query_as(HistoryQuery)
    after = decode_time_cursor(q.cursor, parse_uuid)
    member_id = request.match_info["member_id"]
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        await require_member(conn, p, member_id)  # the one visibility decision of this endpoint
        rows = await history.page(
            conn,
            member_id,
            kind=q.kind,
            received_from=q.from_,
            received_to=q.to,
            after=after,
            limit=q.limit + 1,
            root=p.scope_root,
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = [
        HistoryItem(
            notice_id=str(r["notice_id"]),
            kind=r["kind"],
            title=r["title"],
            state=r["state"],
            summary=r["summary"],
            received_at=r["received_at"],
            status="read" if r["read_at"] else r["dstatus"],
            delivered_at=r["delivered_at"],
            read_at=r["read_at"],
            read_via=r["read_via"],
            seconds_to_read=None
            if r["read_at"] is None
            else (r["read_at"] - r["received_at"]).total_seconds(),
            reminders=r["reminders"],
        )
        for r in rows
    ]
    last = rows[-1] if more else None
    cursor = None if last is None else encode_time_cursor(last["received_at"], last["notice_id"])
    body = HistoryPage(member_id=member_id, items=items, next_cursor=cursor)
    return json_response(body.model_dump(mode="json"))
