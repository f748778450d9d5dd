"""/v1/meetings/{id}/checkins: a member checks in at a meeting; the secretary sees every attempt.

A member (their key, or the /m/ page) sends the phone's position with its datum and accuracy;
the server converts it into the venue's datum, measures the distance and judges the time by its
own clock (``client_time`` is stored, never judged): the rule and the grey zone are documented in
domain/checkin.py. Every attempt is kept with its verdict and numbers. An accepted check-in is the
notice's read receipt (``read_via = 'checkin'``), recorded in the same transaction; a second
accepted check-in answers the first (200, ``recorded: false``). A refused member may retry within
the window, at most ``checkin_attempts_per_minute`` times a minute and ``checkin_attempts_max``
times per meeting (429 with Retry-After).

When the meeting has ``photo_required``, an accepted check-in is *pending its photo*
(``pending_photo: true``): it is kept, but it is neither attendance nor the read receipt until the
member attaches a photo taken now (api/checkin_photos.py); ``counted`` says which it is.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.keys import DEPS, principal
from notifier.api.meetings import Bssid, load_meeting
from notifier.api.problems import Problem, invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.stream import WATCHERS
from notifier.api.types import Id, Strict, Timestamp, parse_uuid
from notifier.db import meetings, receipts, recipients
from notifier.db.pool import Connection, Record
from notifier.domain.checkin import Attempt, Fence, Judgement, judge
from notifier.domain.geo import Datum

routes = Router()

MAX_PAGE = 500


class CheckinIn(Strict):
    lat: float = Field(strict=True, ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(strict=True, ge=-180, le=180, allow_inf_nan=False)
    datum: Datum = Field(
        description="of lat/lng: wgs84 (the browser, GPS), gcj02 (AMap, DingTalk), bd09 (Baidu)"
    )
    accuracy_m: float = Field(
        strict=True, gt=0, le=1_000_000, allow_inf_nan=False, description="the fix's reported accuracy radius"
    )
    mock: bool = Field(
        strict=True, default=False, description="the position came from a mock provider (Android)"
    )
    bssid: Bssid | None = Field(default=None, description="the Wi-Fi access point connected to")
    client_time: Timestamp | None = Field(default=None, description="the phone's clock: stored, never judged")


class Window(BaseModel):
    opens_at: datetime
    closes_at: datetime


class CheckinOut(BaseModel):
    id: int
    meeting_id: str
    member_id: str
    member_name: str | None = None
    at: datetime = Field(description="the server's clock")
    verdict: Literal["ok", "outside", "too_early", "too_late", "low_accuracy", "mock_location"]
    accepted: bool
    flagged: bool = Field(description="accepted at the fence's edge (distance > radius, within the accuracy)")
    reason: str
    distance_m: float | None = Field(description="from the venue, after converting into the venue's datum")
    accuracy_m: float | None
    radius_m: int
    max_accuracy_m: int
    window: Window
    bssid_matched: bool
    datum: str | None
    venue_datum: str
    mock: bool
    client_time: datetime | None
    recorded: bool = Field(description="false when this answers an earlier accepted check-in")
    photo_required: bool = Field(description="the meeting requires a photo taken at check-in")
    pending_photo: bool = Field(
        description="accepted, but the meeting requires a photo and none is attached yet: not counted"
    )
    counted: bool = Field(
        description="counts as attendance and as the read receipt (accepted, with its "
        "photo when one is required)"
    )
    photo_url: str | None = Field(description="the photo attached to this check-in (secretaries; the member)")


class CheckinPage(BaseModel):
    items: list[CheckinOut]
    next_cursor: str | None


class CheckinQuery(Strict):
    outcome: Literal["accepted", "rejected"] | None = None
    member: Id | None = None
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=40)


def fence_of(meeting: Record) -> Fence:
    return Fence(
        lat=meeting["venue_lat"],
        lng=meeting["venue_lng"],
        datum=meeting["venue_datum"],
        radius_m=meeting["radius_m"],
        opens_at=meeting["checkin_opens_at"],
        closes_at=meeting["checkin_closes_at"],
        max_accuracy_m=meeting["max_accuracy_m"],
        bssids=frozenset(meeting["bssids"]),
    )


def reason(row: Record | dict[str, Any], meeting: Record) -> str:
    """The verdict in words, with its numbers."""
    d, acc, r = row["distance_m"], row["accuracy_m"], meeting["radius_m"]
    at = f"{d:.0f} m from the venue (accuracy {acc:.0f} m)" if d is not None and acc is not None else ""
    verdict = row["verdict"]
    if verdict == "mock_location":
        return "the position came from a mock location provider"
    if verdict == "too_early":
        return f"check-in opens at {meeting['checkin_opens_at'].isoformat()}"
    if verdict == "too_late":
        return f"check-in closed at {meeting['checkin_closes_at'].isoformat()}"
    if verdict == "outside":
        return f"{at}: outside the {r} m radius"
    if verdict == "low_accuracy":
        return f"{at}: accuracy worse than {meeting['max_accuracy_m']} m; retry with a better fix"
    if row["bssid_matched"]:
        return "on the venue's Wi-Fi"
    if row["flagged"]:
        return f"{at}: beyond the {r} m radius but within the accuracy; flagged for review"
    return f"{at}: inside the {r} m radius"


def checkin_out(row: Record, meeting: Record, *, recorded: bool) -> dict[str, Any]:
    accepted = row["verdict"] == "ok"
    pending = accepted and meeting["photo_required"] and row["photo_id"] is None
    said = reason(row, meeting)
    if pending:
        said += "; the meeting requires a photo: not counted as attendance (nor read) until it is attached"
    base = f"/v1/meetings/{row['notice_id']}/checkins/{row['id']}/photo"
    data = {
        "id": row["id"],
        "meeting_id": str(row["notice_id"]),
        "member_id": row["member_id"],
        "member_name": row.get("member_name"),
        "at": row["at"],
        "verdict": row["verdict"],
        "accepted": accepted,
        "flagged": row["flagged"],
        "reason": said,
        "distance_m": None if row["distance_m"] is None else round(row["distance_m"], 1),
        "accuracy_m": row["accuracy_m"],
        "radius_m": meeting["radius_m"],
        "max_accuracy_m": meeting["max_accuracy_m"],
        "window": {"opens_at": meeting["checkin_opens_at"], "closes_at": meeting["checkin_closes_at"]},
        "bssid_matched": row["bssid_matched"],
        "datum": row["datum"],
        "venue_datum": meeting["venue_datum"],
        "mock": row["mock"],
        "client_time": row["client_time"],
        "recorded": recorded,
        "photo_required": meeting["photo_required"],
        "pending_photo": pending,
        "counted": accepted and not pending,
        "photo_url": None if row["photo_id"] is None else base,
    }
    return CheckinOut.model_validate(data).model_dump(mode="json")


def _too_many(total: int, recent: int, first_recent: datetime | None, now: datetime, limits: Any) -> None:
    if total >= limits.checkin_attempts_max:
        raise Problem(
            429,
            "Too Many Requests",
            f"{total} check-in attempts at this meeting: no more are taken; ask the secretary",
            type_="checkin-attempts-exhausted",
        )
    if recent >= limits.checkin_attempts_per_minute and first_recent is not None:
        wait = max(1, math.ceil((first_recent + timedelta(minutes=1) - now).total_seconds()))
        raise Problem(
            429,
            "Too Many Requests",
            f"at most {limits.checkin_attempts_per_minute} check-in attempts a minute; "
            f"retry after {wait} seconds",
            type_="checkin-rate-limited",
            headers={"Retry-After": str(wait)},
        )


@routes.route(
    "POST",
    "/v1/meetings/{notice_id}/checkins",
    summary="Check in at a meeting (member): judged by place and the server's clock",
    tag="meetings",
    body=CheckinIn,
    response=CheckinOut,
    status=201,
    responses={
        200: "an accepted check-in already exists: it is answered again (recorded false)",
        409: "the meeting's notice is still being fanned out (retry after Retry-After seconds), or was "
        "recalled (the meeting is called off)",
        429: "too many attempts: a minute's limit (Retry-After), or the meeting's limit",
    },
)
async def post_checkin(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("member")
    assert p.member_id is not None
    body = call.body_as(CheckinIn)
    deps = request.app[DEPS]
    source = "page" if request.path.startswith("/m/") else "api"  # the member page calls this handler
    async with deps.pool.acquire() as conn, conn.transaction():
        meeting = await meeting_for_member(conn, request.match_info["notice_id"], p.member_id)
        notice_id = str(meeting["notice_id"])
        await meetings.lock_member(conn, notice_id, p.member_id)
        previous = await meetings.accepted(conn, notice_id, p.member_id)
        if previous is not None:
            return json_response(checkin_out(previous, meeting, recorded=False), status=200)
        now: datetime = meeting["now"]
        tried = await meetings.attempts(conn, notice_id, p.member_id, now - timedelta(minutes=1))
        _too_many(tried["total"], tried["recent"], tried["first_recent_at"], now, deps.settings)
        attempt = Attempt(body.lat, body.lng, body.datum, body.accuracy_m, body.mock, body.bssid)
        judged: Judgement = judge(fence_of(meeting), attempt, now)
        row = await meetings.insert_checkin(
            conn,
            {
                "notice_id": notice_id,
                "member_id": p.member_id,
                "at": now,
                "lat": body.lat,
                "lng": body.lng,
                "datum": body.datum,
                "accuracy_m": body.accuracy_m,
                "distance_m": judged.distance_m,
                "bssid": body.bssid,
                "bssid_matched": judged.bssid_matched,
                "mock": body.mock,
                "client_time": body.client_time,
                "verdict": judged.verdict,
                "flagged": judged.flagged,
                "source": source,
            },
        )
        assert row is not None  # the member's lock: no accepted check-in slipped in
        # With photo_required the receipt comes with the photo (api/checkin_photos.py).
        counted = judged.accepted and not meeting["photo_required"]
        read = counted and await receipts.mark_read(conn, notice_id, p.member_id, "checkin")
    # committed: the live streams of this meeting may show it now
    if read:
        request.app[WATCHERS].changed(notice_id)
    else:
        request.app[WATCHERS].hint(notice_id)
    return json_response(checkin_out(row, meeting, recorded=True), status=201)


async def meeting_for_member(conn: Connection, notice_id: str, member_id: str) -> Record:
    """The meeting (with the engine clock as ``now``) when the member is invited, else 404; 409
    while its notice is still being fanned out and has not reached them yet."""
    nid = parse_uuid(notice_id)
    meeting = None if nid is None else await meetings.for_checkin(conn, nid)
    if meeting is None:
        raise not_found("meeting")
    if await recipients.get(conn, str(meeting["notice_id"]), member_id) is None:
        if meeting["state"] in ("queued", "fanning_out", "scheduled"):
            raise Problem(
                409,
                "Conflict",
                "the meeting's notice has not reached you yet; retry shortly",
                type_="not-fanned-out",
                headers={"Retry-After": "1"},
            )
        raise not_found("meeting")
    if meeting["recalled_at"] is not None:
        raise Problem(
            409,
            "Conflict",
            f"this meeting's notice was recalled at {meeting['recalled_at'].isoformat()}: no check-ins",
            type_="meeting-recalled",
        )
    return meeting


@routes.route(
    "GET",
    "/v1/meetings/{notice_id}/checkins",
    summary="Check-in attempts at a meeting, accepted and refused, with the reasons (a member: their own)",
    tag="meetings",
    query=CheckinQuery,
    response=CheckinPage,
    responses={422: "cursor is not a next_cursor this API returned"},
)
async def list_checkins(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    q = call.query_as(CheckinQuery)
    after = 0
    if q.cursor is not None:
        if not (q.cursor.isascii() and q.cursor.isdigit() and len(q.cursor) <= 18):
            raise invalid("query.cursor", "not a cursor this API returned")
        after = int(q.cursor)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        meeting, seen = await load_meeting(conn, p, request.match_info["notice_id"])
        rows = await meetings.list_checkins(
            conn,
            str(meeting["notice_id"]),
            seen["slice_root"],
            after=after,
            limit=q.limit + 1,
            outcome=q.outcome,
            member_id=p.member_id if p.role == "member" else q.member,
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return json_response(
        {
            "items": [checkin_out(r, meeting, recorded=True) for r in rows],
            "next_cursor": str(rows[-1]["id"]) if more else None,
        }
    )
