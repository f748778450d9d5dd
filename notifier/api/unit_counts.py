"""GET /v1/notices: a unit's notices, newest first, each with the caller's slice of the counts.
GET /v1/notices/{id}/units?parent=X: the notice rolled up over X's child units (and X's own
members), worst read rate first. Both read the per-unit counters (db/unit_counts.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.auth import require_unit
from notifier.api.cursors import decode_time_cursor, encode_time_cursor
from notifier.api.keys import DEPS, principal
from notifier.api.notices import NoticeKind, load_visible_notice
from notifier.api.problems import invalid
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Strict, Timestamp, parse_uuid
from notifier.db import unit_counts
from notifier.db.pool import Connection, Record
from notifier.db.units import common_ancestor

routes = Router()

NoticeState = Literal["scheduled", "queued", "fanning_out", "active", "recalled", "failed"]


class SliceCounts(BaseModel):
    recipients: int
    delivered: int
    read: int
    unread: int
    read_rate: float | None = Field(description="read / recipients; null when nobody was sent it")


def _slice(row: Record) -> dict[str, Any]:
    recipients, read = int(row["recipients"]), int(row["read"])
    return {
        "recipients": recipients,
        "delivered": int(row["delivered"]),
        "read": read,
        "unread": recipients - read,
        "read_rate": round(read / recipients, 4) if recipients else None,
    }


class NoticeListQuery(Strict):
    unit: Id | None = Field(
        default=None,
        description="notices created under or reaching this unit's subtree, with its counts "
        "(inside the caller's units); default: the caller's unit (an admin: every notice)",
    )
    kind: NoticeKind | None = None
    state: NoticeState | None = None
    created_after: Timestamp | None = None
    created_before: Timestamp | None = None
    q: str | None = Field(default=None, min_length=1, max_length=200, description="in the title or body")
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=400)


class NoticeListItem(BaseModel):
    id: str
    kind: str
    title: str
    state: NoticeState
    created_at: datetime
    send_at: datetime | None
    expires_at: datetime | None
    recalled_at: datetime | None
    counts: SliceCounts


class NoticeListPage(BaseModel):
    items: list[NoticeListItem]
    next_cursor: str | None


@routes.route(
    "GET",
    "/v1/notices",
    summary="Notices created under or reaching a unit, newest first, with that unit's counts",
    tag="notices",
    query=NoticeListQuery,
    response=NoticeListPage,
    responses={
        404: "unit is unknown or outside your units",
        422: "cursor is not a next_cursor this API returned",
    },
)
async def list_notices(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(NoticeListQuery)
    after = decode_time_cursor(q.cursor, parse_uuid)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        if q.unit is not None:
            await require_unit(conn, p, q.unit)
        rows = await unit_counts.list_notices(
            conn,
            q.unit or p.scope_root,
            kind=q.kind,
            state=q.state,
            created_after=q.created_after,
            created_before=q.created_before,
            text=q.q,
            limit=q.limit + 1,
            after=after,
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = [
        NoticeListItem(
            id=str(r["id"]),
            kind=r["kind"],
            title=r["title"],
            state=r["state"],
            created_at=r["created_at"],
            send_at=r["send_at"],
            expires_at=r["expires_at"],
            recalled_at=r["recalled_at"],
            counts=SliceCounts.model_validate(_slice(r)),
        ).model_dump(mode="json")
        for r in rows
    ]
    cursor = encode_time_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return json_response({"items": items, "next_cursor": cursor})


class RollupQuery(Strict):
    parent: Id | None = Field(
        default=None,
        description="the unit whose children are rolled up (inside the caller's units); "
        "default: the caller's unit, or for an admin the unit that created the notice",
    )


Bucket = Literal["1m", "5m", "15m", "30m", "60m", "later"]


class ReadWithin(BaseModel):
    """Reads by time to read (from the fan-out), in disjoint buckets: within 1 minute, within 5
    (but not 1), 15, 30, 60 minutes, later."""

    m1: int = Field(alias="1m")
    m5: int = Field(alias="5m")
    m15: int = Field(alias="15m")
    m30: int = Field(alias="30m")
    m60: int = Field(alias="60m")
    later: int


class UnitRow(SliceCounts):
    unit_id: str
    name: str
    direct: bool = Field(
        description="true: the members of the parent unit itself; false: the child unit's whole subtree"
    )
    read_within: ReadWithin
    median_read: Bucket | None = Field(
        description="the bucket by which half the recipients had read; null while fewer than half have"
    )
    last_read_at: datetime | None


class Rollup(BaseModel):
    notice_id: str
    parent: str
    units: list[UnitRow]


async def unit_parent(conn: Connection, notice: Record) -> str | None:
    """The roll-up parent for a caller bound to no unit (an admin), when it names none: the unit
    that created the notice, else the lowest unit holding all its audience units -- one unit:
    its children; sibling branches: their parent, so every branch gets its bar (the page and the
    stream agree on it). None for an audience of named members only, or across organisations."""
    if notice["scope_unit_id"] is not None:
        return str(notice["scope_unit_id"])
    audience = [str(u) for u in notice["audience"].get("units") or []]
    return await common_ancestor(conn, audience) if audience else None


@routes.route(
    "GET",
    "/v1/notices/{notice_id}/units",
    summary="The notice rolled up over a unit's children (and its own members), worst read rate first",
    tag="notices",
    query=RollupQuery,
    response=Rollup,
)
async def notice_units(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(RollupQuery)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        view = await load_visible_notice(conn, p, request.match_info["notice_id"])
        parent = q.parent or view.root or view.row["scope_unit_id"]
        if parent is None:
            raise invalid("query.parent", "required: this notice was not created by a unit")
        await require_unit(conn, p, parent)
        rows = await unit_counts.rollup(conn, view.id, parent)
    return json_response({"notice_id": view.id, "parent": parent, "units": rollup_rows(rows)})


def rollup_rows(rows: list[Record]) -> list[dict[str, Any]]:
    """Roll-up rows (db/unit_counts.py ROLLUP's columns) as the API shows them (also the live stream's)."""
    units = []
    for r in rows:
        buckets = [int(r[c]) for c, _ in unit_counts.BUCKETS]
        units.append(
            UnitRow.model_validate(
                {
                    **_slice(r),
                    "unit_id": r["unit_id"],
                    "name": r["name"],
                    "direct": r["direct"],
                    "read_within": dict(zip([n for _, n in unit_counts.BUCKETS], buckets, strict=True)),
                    "median_read": unit_counts.median_bucket(int(r["recipients"]), buckets),
                    "last_read_at": r["last_read_at"],
                }
            ).model_dump(mode="json", by_alias=True)
        )
    return units
