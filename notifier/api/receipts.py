"""Read receipts and the member's in-app inbox."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import ClassVar, Literal
from uuid import UUID

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.auth import members_visible, require_member
from notifier.api.cursors import decode_time_cursor, encode_time_cursor
from notifier.api.keys import DEPS, principal
from notifier.api.notices import load_visible_notice
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, invalid_many, not_found
from notifier.api.receipts_group import RECEIPTS_GROUP
from notifier.api.routing import Call, Router, json_response
from notifier.api.stream import WATCHERS
from notifier.api.types import Id, Strict, Timestamp, parse_uuid
from notifier.db import inbox as inbox_db
from notifier.db import points, receipts, units

routes = Router()


class ReceiptIn(Strict):
    member_id: Id | None = None
    type: Literal["read"]


class ReceiptOut(BaseModel):
    notice_id: str
    member_id: str
    type: str
    read_at: datetime
    recorded: bool = Field(description="true when this request recorded the first read")


BATCH_MAX = 10_000


class BatchReceiptIn(Strict):
    notice_id: UUID
    member_id: Id
    type: Literal["read"]
    at: Timestamp | None = Field(
        default=None, description="when the member read it (an import of reads made elsewhere); default now"
    )


class BatchIn(Strict):
    # Validated a slice of items at a time, other requests served between (api/routing.py).
    SLICED: ClassVar[str] = "receipts"

    receipts: list[BatchReceiptIn] = Field(min_length=1, max_length=BATCH_MAX)


class BatchItemOut(BaseModel):
    index: int = Field(description="the item's position in the request")
    status: Literal["recorded", "already_read", "not_found"]


class BatchOut(BaseModel):
    recorded: int
    already_read: int
    not_found: int
    results: list[BatchItemOut]


class InboxQuery(Strict):
    unread: bool = False
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=400)


class InboxItem(BaseModel):
    notice_id: str
    kind: str
    title: str
    body: str
    state: str
    created_at: datetime
    read: bool
    read_at: datetime | None
    reminded_at: datetime | None = Field(
        default=None, description="set when an escalation step reminded in-app: the notice is shown again"
    )


class InboxPage(BaseModel):
    items: list[InboxItem]
    next_cursor: str | None


def _reader(p: Principal, body: ReceiptIn) -> str:
    """Whose read this is: a member key's own (another member is 404), else ``member_id`` (422)."""
    if p.role == "member":
        if body.member_id is not None and body.member_id != p.member_id:
            raise not_found("recipient")
        assert p.member_id is not None
        return p.member_id
    if body.member_id is None:
        raise invalid("member_id", "required when acting on behalf of a member")
    return body.member_id


@routes.route(
    "POST",
    "/v1/notices/{notice_id}/receipts",
    summary="Record a read receipt (idempotent)",
    tag="receipts",
    body=ReceiptIn,
    response=ReceiptOut,
    responses={
        409: "the notice is still being fanned out; retry after Retry-After seconds",
        422: "member_id is required unless a member key records its own read",
    },
)
async def post_receipt(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "member")
    body = call.body_as(ReceiptIn)
    member_id = _reader(p, body)
    nid = parse_uuid(request.match_info["notice_id"])
    if nid is None or (p.role != "member" and not p.is_admin and p.scope_root is None):
        raise not_found("notice")

    # Recording a read is a change: a unit-bound caller only of its own notices (not a branch the
    # notice reached). One statement checks, records, counts and answers, with the other receipts
    # that arrive meanwhile (api/receipts_group.py, db/receipts.py RECORD_MANY); it also tells the
    # live streams of the notice once the read is committed.
    row = await request.app[RECEIPTS_GROUP].record(
        str(nid), member_id, root=p.scope_root, member_key=p.role == "member"
    )
    if row is None:
        raise not_found("notice")
    if not row["member_ok"]:
        raise not_found("recipient")
    if not row["recipient"]:
        if row["state"] in ("queued", "fanning_out"):
            raise Problem(
                409,
                "Conflict",
                "the notice is still being fanned out; retry shortly",
                type_="not-fanned-out",
                headers={"Retry-After": "1"},
            )
        raise not_found("recipient")
    # ReceiptOut's fields, serialised as pydantic serialises the model (read_at "...Z"), without
    # building one per receipt.
    out = {
        "notice_id": str(row["id"]),
        "member_id": member_id,
        "type": "read",
        "read_at": row["read_at"],
        "recorded": bool(row["recorded"]),
    }
    return web.Response(body=pydantic_core.to_json(out), content_type="application/json")


@routes.route(
    "POST",
    "/v1/receipts:batch",
    summary="Record up to 10,000 read receipts in one call (idempotent)",
    tag="receipts",
    body=BatchIn,
    response=BatchOut,
    responses={
        422: "an item is invalid (its field named with its index, e.g. receipts[3].at), "
        "an ``at`` lies in the future, or more than 10,000 items; nothing is recorded",
    },
)
async def post_receipts_batch(request: web.Request, call: Call) -> web.Response:
    """Each item is checked as the single receipt is (the notice in the caller's own units, the
    member visible to it; a member key only for itself): one the caller may not record, or whose
    member did not receive the notice, is ``not_found`` and the others are recorded."""
    p = principal(request)
    p.require("admin", "service", "member")
    items = call.body_as(BatchIn).receipts
    deps = request.app[DEPS]
    # Up to 10,000 items on the event loop: each notice id's text made once (a call names few).
    texts: dict[int, str] = {}
    pairs = [
        (texts.get(r.notice_id.int) or texts.setdefault(r.notice_id.int, str(r.notice_id)), r.member_id)
        for r in items
    ]
    times = [r.at for r in items]
    # The checks only read; the writes (the reads, their points) are one transaction. On the pool
    # for bulk work: its backend yields the CPU to status reads and single receipts.
    async with deps.bulk_pool.acquire() as conn:
        if any(at is not None for at in times):
            now = await receipts.now(conn)
            late = [
                (f"receipts[{i}].at", "must not be in the future")
                for i, at in enumerate(times)
                if at and at > now
            ]
            if late:
                raise invalid_many(late)
        notice_ids = sorted(texts.values())
        lessons: bool = True  # whether a lesson may be among them (its reads earn study points)
        if p.role == "member":  # its own reads: of the notices it received (the recipient rows say)
            allowed = set(notice_ids)
        else:
            allowed, lessons = set(), False
            for nid in notice_ids:  # the notices of one call are few: an import is per notice
                try:
                    view = await load_visible_notice(conn, p, nid, own=True)
                except Problem:
                    continue
                allowed.add(str(view.id))
                lessons = lessons or view.row["kind"] == "lesson"
        if p.is_admin:
            # Every member is visible to an admin (members_visible: those that exist), and a member
            # that does not exist received nothing: the statement's recipient rows leave it out.
            wanted = [i for i, (nid, _) in enumerate(pairs) if nid in allowed]
        else:
            visible = await members_visible(conn, p, sorted({mid for _, mid in pairs}))
            wanted = [i for i, (nid, mid) in enumerate(pairs) if nid in allowed and mid in visible]
        every = len(wanted) == len(pairs)

        async def mark() -> dict[tuple[str, str], bool]:
            return await receipts.mark_read_answer(
                conn,
                [nid for nid, _ in pairs] if every else [pairs[i][0] for i in wanted],
                [mid for _, mid in pairs] if every else [pairs[i][1] for i in wanted],
                "api",
                times if every else [times[i] for i in wanted],
            )

        if not lessons:  # no study points to award: the one statement is atomic by itself
            answer = await mark()
        else:
            async with conn.transaction():  # the reads and their lessons' study points together
                answer = await mark()
                read_now = [pair for pair, rec in answer.items() if rec]
                await points.award_lesson_reads(conn, [n for n, _ in read_now], [m for _, m in read_now])
    for changed in sorted({nid for (nid, _), rec in answer.items() if rec}):  # live streams may show them
        request.app[WATCHERS].changed(changed)
    if len(pairs) > 1000:
        await asyncio.sleep(0)  # other requests' turn between reading the answer and writing it out
    # The answer written out here, not as BatchItemOut models nor through json.dumps of 10,000
    # dicts (BatchOut documents the shape): each status is one of three constant strings.
    statuses: list[str] = []
    first: set[tuple[str, str]] = set()
    for pair in pairs:
        rec = answer.get(pair)
        if rec is None:
            statuses.append("not_found")
        elif rec and pair not in first:
            first.add(pair)
            statuses.append("recorded")
        else:
            statuses.append("already_read")
    tally = {s: statuses.count(s) for s in ("recorded", "already_read", "not_found")}
    results = ",".join([f'{{"index":{i},"status":"{s}"}}' for i, s in enumerate(statuses)])
    head = ",".join(f'"{s}":{n}' for s, n in tally.items())
    return web.Response(body=f'{{{head},"results":[{results}]}}'.encode(), content_type="application/json")


@routes.route(
    "GET",
    "/v1/members/{member_id}/inbox",
    summary="A member's in-app notices, newest first",
    tag="receipts",
    query=InboxQuery,
    response=InboxPage,
    responses={422: "cursor is not a next_cursor this API returned"},
)
async def inbox(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    q = call.query_as(InboxQuery)
    member_id = request.match_info["member_id"]
    after = decode_time_cursor(q.cursor, parse_uuid)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        await require_member(conn, p, member_id)
        root = p.scope_root
        reach = None if root is None else await units.subtree_ids(conn, root)
        rows = await inbox_db.page(
            conn, member_id, unread_only=q.unread, after=after, limit=q.limit + 1, units=reach
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = [
        InboxItem(
            notice_id=str(r["id"]),
            kind=r["kind"],
            title=r["title"],
            body=r["body"],
            state=r["state"],
            created_at=r["created_at"],
            read=r["read_at"] is not None,
            read_at=r["read_at"],
            reminded_at=r["reminded_at"],
        ).model_dump(mode="json")
        for r in rows
    ]
    cursor = encode_time_cursor(rows[-1]["shown_at"], rows[-1]["id"]) if more else None
    return json_response({"items": items, "next_cursor": cursor})
