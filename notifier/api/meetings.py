"""/v1/meetings: the 三会一课 meetings (a notice of kind ``meeting`` with a time, a venue with its
datum and a check-in fence), and /v1/meeting-types, the configurable list of meeting types.

A meeting goes out as its notice (to the holding unit's subtree unless an audience is given) and
is created in the notice's transaction, idempotently per Idempotency-Key. Who sees a meeting is
who sees its notice (db/visibility.py); a member sees the meetings they were invited to.
Check-ins (api/checkins.py) are judged against the fence stored here.

Defaults (each a field of the request): radius 300 m (100..3000), check-in from 30 minutes before
the start to 15 minutes after it, accuracy no worse than 150 m, no Wi-Fi, no photo.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, WithJsonSchema, field_validator

from notifier.api import audit
from notifier.api.auth import require_unit
from notifier.api.cursors import decode_time_cursor, encode_time_cursor
from notifier.api.keys import DEPS, AppDeps, principal
from notifier.api.notices import (
    IDEMPOTENCY_HEADER,
    Audience,
    NoticeIn,
    NoticeOut,
    create_once,
    idempotency_key,
    insert_notice,
    load_visible_notice,
    request_digest,
    require_channels,
    wake_fanout,
)
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, invalid_many, not_found
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.types import Channels, Id, Name, Strict, Timestamp, parse_uuid
from notifier.db import meetings, notices, recipients
from notifier.db.pool import Connection, Record
from notifier.domain.checkin import BSSID_PATTERN, normalise_bssid
from notifier.domain.escalation import PolicyRules
from notifier.domain.geo import Datum

routes = Router()

DEFAULT_RADIUS_M = 300
DEFAULT_OPENS_BEFORE = timedelta(minutes=30)
DEFAULT_CLOSES_AFTER = timedelta(minutes=15)
DEFAULT_MAX_ACCURACY_M = 150
MAX_BSSIDS = 50
MAX_PAGE = 200
TYPE_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # as schemas/0025 checks it


class Venue(Strict):
    lat: float = Field(strict=True, ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(strict=True, ge=-180, le=180, allow_inf_nan=False)
    datum: Datum = Field(
        description="the datum the coordinates are in: wgs84 (GPS, the browser), gcj02 (AMap, DingTalk), "
        "bd09 (Baidu). Kept as given; check-ins are converted into it"
    )
    name: str | None = Field(default=None, min_length=1, max_length=200, description="the address, as shown")


# A Wi-Fi BSSID as phones and routers write it (case, ':' '-' '.' separators), kept normalised.
Bssid = Annotated[
    str,
    StringConstraints(min_length=12, max_length=64, pattern=BSSID_PATTERN),
    AfterValidator(normalise_bssid),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 12,
            "maxLength": 64,
            "pattern": BSSID_PATTERN,
            "examples": ["aa:bb:cc:dd:ee:ff"],
        }
    ),
]


class MeetingIn(Strict):
    type: str = Field(min_length=1, max_length=64, description="a code of GET /v1/meeting-types")
    title: str = Field(min_length=1, max_length=200)
    body: str | None = Field(default=None, min_length=1, max_length=20_000, description="default: the title")
    unit_id: Id | None = Field(
        default=None, description="the unit holding the meeting; default the caller's (an admin names one)"
    )
    audience: Audience | None = Field(default=None, description="who is invited; default the unit's subtree")
    channels: Channels = Field(default_factory=lambda: ["inapp"], min_length=1, max_length=16)
    escalation: Name | PolicyRules | None = None
    send_at: Timestamp | None = Field(default=None, description="when the invitation goes out; default now")
    starts_at: Timestamp
    ends_at: Timestamp
    venue: Venue
    radius_m: int = Field(strict=True, default=DEFAULT_RADIUS_M, ge=100, le=3000)
    checkin_opens_at: Timestamp | None = Field(default=None, description="default: 30 min before starts_at")
    checkin_closes_at: Timestamp | None = Field(default=None, description="default: 15 min after starts_at")
    max_accuracy_m: int = Field(
        strict=True,
        default=DEFAULT_MAX_ACCURACY_M,
        ge=5,
        le=3000,
        description="a fix less accurate than this is refused",
    )
    bssids: list[Bssid] = Field(
        default_factory=list,
        max_length=MAX_BSSIDS,
        description="Wi-Fi access points (BSSIDs) at the venue: being on one counts as being there",
    )
    photo_required: bool = Field(
        default=False,
        strict=True,
        description="an accepted check-in counts (as attendance and as read) only once the member "
        "attaches a photo taken at check-in (POST /v1/meetings/{id}/checkins/{checkin_id}/photo)",
    )

    @field_validator("bssids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class MeetingTypeOut(BaseModel):
    code: str
    name: str
    name_en: str | None
    position: int


class MeetingTypeList(BaseModel):
    items: list[MeetingTypeOut]


class MeetingTypeIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    name_en: str | None = Field(default=None, min_length=1, max_length=100)
    position: int = Field(strict=True, default=0, ge=0, le=10_000)


class VenueOut(BaseModel):
    lat: float
    lng: float
    datum: str
    name: str | None


class CheckinCounts(BaseModel):
    accepted: int = Field(description="members with an accepted check-in")
    flagged: int = Field(description="of those, accepted at the fence's edge (for review)")
    rejected: int = Field(description="refused attempts")


class MeetingOut(BaseModel):
    id: str = Field(description="the meeting's notice id")
    type: str
    title: str
    state: str = Field(description="its notice's state")
    unit_id: str
    starts_at: datetime
    ends_at: datetime
    venue: VenueOut
    radius_m: int
    checkin_opens_at: datetime
    checkin_closes_at: datetime
    max_accuracy_m: int
    bssids: list[str] | None = Field(description="not shown to members")
    photo_required: bool
    created_at: datetime
    notice: NoticeOut | None = Field(default=None, description="the notice with live counts (one meeting)")
    checkins: CheckinCounts | None = Field(default=None, description="of the caller's slice (one meeting)")


class MeetingList(BaseModel):
    items: list[MeetingOut]
    next_cursor: str | None


class MeetingQuery(Strict):
    from_: Timestamp | None = Field(default=None, alias="from", description="starting at or after")
    to: Timestamp | None = Field(default=None, description="starting before")
    unit: Id | None = Field(default=None, description="held by this unit")
    type: str | None = Field(default=None, max_length=64)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=400)


def meeting_out(row: Record | dict[str, Any], *, member: bool = False) -> dict[str, Any]:
    data = {
        "id": str(row["notice_id"]),
        "type": row["type"],
        "title": row["title"],
        "state": row["state"],
        "unit_id": row["unit_id"],
        "starts_at": row["starts_at"],
        "ends_at": row["ends_at"],
        "venue": {
            "lat": row["venue_lat"],
            "lng": row["venue_lng"],
            "datum": row["venue_datum"],
            "name": row["venue_name"],
        },
        "radius_m": row["radius_m"],
        "checkin_opens_at": row["checkin_opens_at"],
        "checkin_closes_at": row["checkin_closes_at"],
        "max_accuracy_m": row["max_accuracy_m"],
        "bssids": None if member else list(row["bssids"]),
        "photo_required": row["photo_required"],
        "created_at": row["created_at"],
    }
    return MeetingOut.model_validate(data).model_dump(mode="json", exclude_none=False)


def _window(body: MeetingIn) -> tuple[datetime, datetime]:
    """The check-in window, checked against the meeting's times (422 naming the field)."""
    if body.ends_at <= body.starts_at:
        raise invalid("ends_at", "must be after starts_at")
    opens = body.checkin_opens_at or body.starts_at - DEFAULT_OPENS_BEFORE
    closes = body.checkin_closes_at or body.starts_at + DEFAULT_CLOSES_AFTER
    errors: list[tuple[str, str]] = []
    if opens >= body.ends_at:
        errors.append(("checkin_opens_at", "must be before ends_at"))
    if closes <= opens:
        field = "checkin_closes_at" if body.checkin_closes_at is not None else "checkin_opens_at"
        errors.append((field, "the check-in window must close after it opens"))
    if body.send_at is not None and body.send_at >= body.ends_at:
        errors.append(("send_at", "must be before ends_at"))
    if errors:
        raise invalid_many(errors)
    return opens, closes


async def _holding_unit(conn: Connection, p: Principal, body: MeetingIn) -> str:
    unit_id = body.unit_id or p.scope_root
    if unit_id is None:
        raise invalid("unit_id", "required for an admin: the unit holding the meeting")
    try:
        await require_unit(conn, p, unit_id)
    except Problem as exc:  # not found, or outside the caller's reach: the field as written
        if exc.status == 404:
            raise invalid("unit_id", "unknown unit") from None
        raise
    return unit_id


async def _create(
    conn: Connection, deps: AppDeps, p: Principal, body: MeetingIn, opens: datetime, closes: datetime
) -> dict[str, Any]:
    if not await meetings.type_exists(conn, body.type):
        raise invalid("type", "unknown meeting type; see GET /v1/meeting-types")
    unit_id = await _holding_unit(conn, p, body)
    notice = NoticeIn(
        kind="notice",
        title=body.title,
        body=body.body or body.title,
        audience=body.audience or Audience(units=[unit_id]),
        channels=body.channels,
        escalation=body.escalation,
        send_at=body.send_at,
        expires_at=body.ends_at,  # no reminders for a meeting that is over
    )
    data = await insert_notice(conn, deps, p, notice, kind="meeting")
    row = await meetings.insert(
        conn,
        data["id"],
        {
            "type": body.type,
            "unit_id": unit_id,
            "scope_unit_id": p.scope_root,
            "starts_at": body.starts_at,
            "ends_at": body.ends_at,
            "venue_name": body.venue.name,
            "venue_lat": body.venue.lat,
            "venue_lng": body.venue.lng,
            "venue_datum": body.venue.datum,
            "radius_m": body.radius_m,
            "checkin_opens_at": opens,
            "checkin_closes_at": closes,
            "max_accuracy_m": body.max_accuracy_m,
            "bssids": body.bssids,
            "photo_required": body.photo_required,
        },
    )
    out = meeting_out(_with_notice(row, data))
    out["notice"] = data
    return out


def _with_notice(row: Record, notice: dict[str, Any] | Record) -> dict[str, Any]:
    return {**dict(row), "title": notice["title"], "state": notice["state"]}


@routes.route(
    "POST",
    "/v1/meetings",
    summary="Call a meeting: its notice goes out, members check in at the venue in the window",
    tag="meetings",
    body=MeetingIn,
    response=MeetingOut,
    status=201,
    headers={IDEMPOTENCY_HEADER: "Replays the first response for the same key and body (24 h)"},
    responses={
        200: Reply("replayed for the same Idempotency-Key", media="application/json"),
        409: "a request with this Idempotency-Key is still being processed",
        422: "an unknown meeting type, unit, channel or escalation policy; ends_at not after starts_at; a "
        "check-in window that closes before it opens or opens after the end; send_at after the end; the "
        "audience outside your reach; the Idempotency-Key used with a different body",
    },
)
async def create_meeting(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    body = call.body_as(MeetingIn)
    deps = request.app[DEPS]
    require_channels(deps, body.channels)
    opens, closes = _window(body)
    key = idempotency_key(request)
    async with deps.pool.acquire() as conn, conn.transaction():
        data, replayed = await create_once(
            conn,
            deps,
            p,
            key,
            request_digest(body, "meeting"),
            lambda: _create(conn, deps, p, body, opens, closes),
        )
        if replayed:
            return json_response(data, status=200, headers={"Idempotent-Replayed": "true"})
        await audit.record(
            conn,
            request,
            "meeting.create",
            "notice",
            data["id"],
            [p.scope_root, data["unit_id"]],
            {"type": body.type, "unit_id": data["unit_id"], "starts_at": body.starts_at.isoformat()},
        )
    await wake_fanout(deps, data["notice"], body.send_at)
    return json_response(data, status=201, headers={"Location": f"/v1/meetings/{data['id']}"})


async def load_meeting(conn: Connection, p: Principal, notice_id: str) -> tuple[Record, dict[str, Any]]:
    """The meeting and its notice as this caller may see them (members: when invited), else 404.
    For a unit-bound caller the dict carries ``slice_root`` (None: the whole meeting)."""
    if p.role == "member":
        nid = parse_uuid(notice_id)
        row = None if nid is None else await meetings.get(conn, nid)
        notice = None if row is None else await notices.get(conn, nid)  # type: ignore[arg-type]
        if row is None or notice is None or p.member_id is None:
            raise not_found("meeting")
        if await recipients.get(conn, str(notice["id"]), p.member_id) is None:
            raise not_found("meeting")
        return row, {"notice": notice, "slice_root": None, "root": None}
    view = await load_visible_notice(conn, p, notice_id)
    row = await meetings.get(conn, view.id)
    if row is None:
        raise not_found("meeting")
    return row, {"notice": view.row, "slice_root": view.slice_root, "root": view.root}


@routes.route(
    "GET",
    "/v1/meetings/{notice_id}",
    summary="A meeting with its notice's live counts and its check-in counts",
    tag="meetings",
    response=MeetingOut,
)
async def get_meeting(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        row, seen = await load_meeting(conn, p, request.match_info["notice_id"])
        notice = seen["notice"]
        out = meeting_out(_with_notice(row, notice), member=p.role == "member")
        if p.role != "member":
            counts = await notices.counts(conn, str(notice["id"]), seen["root"])
            out["notice"] = NoticeOut.model_validate(notices.as_dict(notice, counts)).model_dump(mode="json")
            out["checkins"] = dict(await meetings.checkin_counts(conn, str(notice["id"]), seen["slice_root"]))
    return json_response(out)


@routes.route(
    "GET",
    "/v1/meetings",
    summary="Meetings by start time (those created in your units or reaching them)",
    tag="meetings",
    query=MeetingQuery,
    response=MeetingList,
    responses={
        404: "the unit (?unit=) is unknown or outside your reach",
        422: "to is not after from; cursor is not a next_cursor this API returned",
    },
)
async def list_meetings(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(MeetingQuery)
    if q.from_ is not None and q.to is not None and q.to <= q.from_:
        raise invalid("query.to", "must be after from")
    after = decode_time_cursor(q.cursor, parse_uuid)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        if q.unit is not None:
            await require_unit(conn, p, q.unit)
        rows = await meetings.list_visible(
            conn,
            p.scope_root,
            start=q.from_,
            end=q.to,
            unit_id=q.unit,
            type_=q.type,
            after=after,
            limit=q.limit + 1,
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    cursor = None
    if more:
        cursor = encode_time_cursor(rows[-1]["starts_at"], rows[-1]["notice_id"])
    return json_response({"items": [meeting_out(r) for r in rows], "next_cursor": cursor})


# --- meeting types -------------------------------------------------------------------------------


@routes.route(
    "GET",
    "/v1/meeting-types",
    summary="The meeting types (三会一课) a meeting may have",
    tag="meetings",
    response=MeetingTypeList,
)
async def list_meeting_types(request: web.Request, call: Call) -> web.Response:
    principal(request)
    async with request.app[DEPS].pool.acquire() as conn:
        rows = await meetings.types(conn)
    return json_response({"items": [MeetingTypeOut.model_validate(dict(r)).model_dump() for r in rows]})


@routes.route(
    "PUT",
    "/v1/meeting-types/{type_code}",
    summary="Add or rename a meeting type (admins)",
    tag="meetings",
    body=MeetingTypeIn,
    response=MeetingTypeOut,
    status=201,
    responses={
        200: Reply("renamed", media="application/json"),
        422: "type_code is not lower-case letters, digits and _ starting with a letter (at most 64)",
    },
)
async def put_meeting_type(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin")
    body = call.body_as(MeetingTypeIn)
    code = request.match_info["type_code"]
    if not TYPE_CODE.fullmatch(code):
        raise invalid("type_code", "lower-case letters, digits and _ starting with a letter (at most 64)")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await meetings.upsert_type(conn, code, body.name, body.name_en, body.position)
        await audit.record(conn, request, "meeting_type.put", "meeting_type", code, [], {"name": body.name})
    out = {k: row[k] for k in ("code", "name", "name_en", "position")}
    return json_response(out, status=201 if row["created"] else 200)
