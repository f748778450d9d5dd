"""GET /v1/notices/{id}/roll-call: every unread recipient in the caller's slice, grouped by unit,
each with why they have not read and what the escalation has done so far.

Keyset pages in (unit id, member id) order; a member appears under each of their units inside
the slice (never under a unit outside it). ``Accept: text/csv`` streams the whole roll-call from
the cursor on, page by page, as UTF-8 CSV with a byte-order mark (so Excel reads Chinese names).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.cursors import decode_cursor, encode_cursor
from notifier.api.keys import DEPS, principal
from notifier.api.problems import invalid
from notifier.api.routing import Call, Router, json_response
from notifier.api.slices import load_notice_slice
from notifier.api.types import Id, Strict
from notifier.db import rollcall
from notifier.db.pool import Pool, Record
from notifier.domain.rollcall import Why, why

routes = Router()

CSV_TYPE = "text/csv"
CSV_COLUMNS = (
    "unit_id",
    "unit_name",
    "member_id",
    "name",
    "reason",
    "channel",
    "at",
    "until",
    "error",
    "no_contact",
    "channels",
    "escalation",
)


class RollCallQuery(Strict):
    unit: Id | None = Field(default=None, description="only this unit's subtree (inside your reach)")
    limit: int = Field(default=200, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=800)


class RollCallEntry(Why):
    member_id: str
    name: str


class RollCallGroup(BaseModel):
    unit_id: str
    unit_name: str
    recipients: list[RollCallEntry]


class RollCallPage(BaseModel):
    notice_id: str
    groups: list[RollCallGroup] = Field(
        description="by unit id; a unit cut by the page boundary continues on the next page"
    )
    next_cursor: str | None


def _cursor(value: str | None) -> tuple[str, str] | None:
    raw = decode_cursor(value)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) and x for x in data)):
        raise invalid("query.cursor", "not a cursor this API returned")
    return data[0], data[1]


async def _pages(
    pool: Pool, notice_id: str, roots: list[str] | None, after: tuple[str, str] | None, limit: int
) -> AsyncGenerator[tuple[list[tuple[Record, Why]], tuple[str, str] | None], None]:
    """Pages of (row, why) and the cursor after each (None: the last page). One connection per
    page, so a slow CSV reader holds none between pages."""
    while True:
        async with pool.acquire() as conn:
            rows = await rollcall.page(conn, notice_id, roots, after, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            members = sorted({r["member_id"] for r in rows})
            events = [
                {**e, "members": set(e["members"] or ())}
                for e in await rollcall.escalation_events(conn, notice_id, members)
            ]
        items = [
            (r, why(r["channels"], r["delivered_at"], r["reminders"], events, r["member_id"])) for r in rows
        ]
        after = (rows[-1]["unit_id"], rows[-1]["member_id"]) if more else None
        yield items, after
        if after is None:
            return


def _groups(items: list[tuple[Record, Why]]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for row, reason in items:
        if not groups or groups[-1]["unit_id"] != row["unit_id"]:
            groups.append({"unit_id": row["unit_id"], "unit_name": row["unit_name"], "recipients": []})
        groups[-1]["recipients"].append(
            {"member_id": row["member_id"], "name": row["name"], **reason.model_dump()}
        )
    return groups


def wants_csv(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip().lower() == CSV_TYPE for part in accept.split(","))


def csv_cell(value: str) -> str:
    """Spreadsheets run a cell starting with = + - @ as a formula: a member's name must not."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_row(row: Record, w: Why) -> list[str]:
    channels = "; ".join(
        c.channel + ": " + c.state + (f" ({c.error})" if c.error else "") for c in w.channels
    )
    steps = "; ".join(
        e.action.replace("_", " ")
        + (f" on {e.channel}" if e.channel else "")
        + (" (remind now)" if e.manual else "")
        + f" at {e.at.isoformat()}"
        for e in w.escalation
    )
    values = [
        row["unit_id"],
        row["unit_name"],
        row["member_id"],
        row["name"],
        w.reason,
        w.channel or "",
        w.at.isoformat() if w.at else "",
        w.until.isoformat() if w.until else "",
        w.error or "",
        " ".join(w.no_contact),
        channels,
        steps,
    ]
    return [csv_cell(v) for v in values]


def csv_text(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


@routes.route(
    "GET",
    "/v1/notices/{notice_id}/roll-call",
    summary="Who in your units has not read it, and why (Accept: text/csv for a spreadsheet)",
    tag="notices",
    query=RollCallQuery,
    response=RollCallPage,
    responses={422: "cursor is not a next_cursor this API returned"},
    alternatives={
        CSV_TYPE: {
            "type": "string",
            "description": "with Accept: text/csv -- UTF-8 with a byte-order mark, one row per "
            "(unit, member), columns " + ", ".join(CSV_COLUMNS),
        }
    },
)
async def roll_call(request: web.Request, call: Call) -> web.StreamResponse:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(RollCallQuery)
    after = _cursor(q.cursor)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        notice, roots = await load_notice_slice(conn, p, request.match_info["notice_id"], q.unit)
    notice_id = str(notice["id"])
    pages = _pages(deps.pool, notice_id, roots, after, q.limit)
    if not wants_csv(request):
        items, next_after = await anext(pages)
        await pages.aclose()
        body = RollCallPage(
            notice_id=notice_id,
            groups=[RollCallGroup.model_validate(g) for g in _groups(items)],
            next_cursor=None if next_after is None else encode_cursor(json.dumps(list(next_after))),
        )
        return json_response(body.model_dump(mode="json"))
    resp = web.StreamResponse(
        headers={
            "Content-Type": f"{CSV_TYPE}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="roll-call-{notice_id}.csv"',
        }
    )
    await resp.prepare(request)
    await resp.write("\ufeff".encode() + csv_text([list(CSV_COLUMNS)]))
    async for items, _ in pages:
        await resp.write(csv_text([_csv_row(r, w) for r, w in items]))
    await resp.write_eof()
    return resp
