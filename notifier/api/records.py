"""/v1/meetings/{id}/record: a meeting's archive -- the minutes and the site photos.

Both are written by the meeting's secretary (a key whose unit created the meeting, or an admin)
*at the venue on the meeting's day*: every write carries the device's position (``lat``, ``lng``,
``datum``, ``accuracy_m``), and domain/records.py refuses it (422 naming the reason, nothing
stored) when the position, converted into the venue's datum, lies outside the venue's radius, or
when the server's clock -- never the device's -- is not on the meeting's local day.

A photo is the raw request body (``Content-Type`` is not trusted: the magic bytes decide between
JPEG and PNG; anything else is 422) with the position in the query string -- one request, one
photo, nothing to parse but the bytes, and the size is capped while reading (a
``Content-Length`` over 5 MB is refused before any byte is read; a chunked body as soon as it
passes 5 MB). Photos are stored in PostgreSQL with their SHA-256, once per meeting (the same bytes
again answer 200 with the stored photo), and served to callers who see the meeting, with their
stored type, ``nosniff`` and the hash as a strong ETag.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.keys import DEPS, principal
from notifier.api.notices import load_visible_notice
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, not_found
from notifier.api.providers import read_capped
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.types import Strict, parse_uuid
from notifier.db import records, units
from notifier.db.pool import Connection, Record
from notifier.domain import photos
from notifier.domain.records import Device, Venue, judge

routes = Router()


class DevicePosition(Strict):
    """Where the uploading device is, as its location API reports it."""

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)
    datum: Literal["wgs84", "gcj02", "bd09"] = Field(
        description="the position's datum: wgs84 (GPS, the browser), gcj02 (AMap, DingTalk), bd09 (Baidu)"
    )
    accuracy_m: float = Field(
        gt=0, le=100_000, allow_inf_nan=False, description="the reported accuracy radius in metres"
    )


class MinutesIn(DevicePosition):
    minutes: str = Field(min_length=1, max_length=100_000)


class PhotoOut(BaseModel):
    id: str
    sha256: str
    content_type: Literal["image/jpeg", "image/png"]
    size: int
    distance_m: float = Field(description="from the venue, in the venue's datum, when uploaded")
    uploaded_at: datetime
    url: str


class RecordOut(BaseModel):
    notice_id: str
    minutes: str | None
    minutes_distance_m: float | None
    minutes_updated_at: datetime | None
    photos: list[PhotoOut]


REFUSED_422 = (
    "the device is outside the venue's radius (distance - accuracy > radius, in the venue's datum), "
    "its accuracy is worse than the meeting allows, or the server's date is not the meeting's local day"
)


async def load_meeting(conn: Connection, p: Principal, notice_id: str, *, write: bool = False) -> Record:
    """The meeting as ``venue`` reads it, if the caller sees its notice, else 404. ``write``: the
    caller created it, or the unit holding it lies within the caller's units (its secretary)."""
    view = await load_visible_notice(conn, p, notice_id)
    row = await records.venue(conn, view.id)
    if row is None:
        raise not_found("meeting")
    if write and not view.owner:
        root = p.scope_root
        if root is None or not await units.is_within(conn, row["unit_id"], root):
            raise not_found("meeting")
    return row


def check_place_and_day(meeting: Record, at: DevicePosition) -> tuple[tuple[float, float, str, float], float]:
    """The device as stored and its distance from the venue; 422 when the record is refused."""
    venue = Venue(
        lat=meeting["venue_lat"],
        lng=meeting["venue_lng"],
        datum=meeting["venue_datum"],
        radius_m=meeting["radius_m"],
        max_accuracy_m=meeting["max_accuracy_m"],
        starts_at=meeting["starts_at"],
        ends_at=meeting["ends_at"],
        timezone=meeting["timezone"],
    )
    distance, refusal = judge(venue, Device(at.lat, at.lng, at.datum, at.accuracy_m), meeting["now"])
    if refusal is not None:
        raise Problem(
            422,
            "Unprocessable Content",
            refusal.detail,
            type_=refusal.kind,
            errors=[{"field": refusal.field, "message": refusal.detail}],
        )
    return (at.lat, at.lng, at.datum, at.accuracy_m), distance


async def read_photo(request: web.Request) -> tuple[bytes, photos.PhotoType]:
    """The request body as a photo: at most 5 MB (413 without buffering more), JPEG or PNG by its
    magic bytes (422 naming ``body`` otherwise). For any endpoint that takes a photo."""
    data = await read_capped(request, photos.MAX_PHOTO_BYTES, what="a photo")
    kind = photos.sniff(data)
    if kind is None:
        raise invalid("body", "not a JPEG or PNG image (judged by its content, not its Content-Type)")
    return data, kind


async def record_view(conn: Connection, notice_id: str) -> dict[str, object]:
    minutes = await records.get_minutes(conn, notice_id)
    return {
        "notice_id": notice_id,
        "minutes": None if minutes is None else minutes["minutes"],
        "minutes_distance_m": None if minutes is None else round(float(minutes["distance_m"]), 1),
        "minutes_updated_at": None if minutes is None else minutes["updated_at"].isoformat(),
        "photos": [records.as_photo(notice_id, r) for r in await records.list_photos(conn, notice_id)],
    }


@routes.route(
    "GET",
    "/v1/meetings/{notice_id}/record",
    summary="A meeting's record: the minutes and the site photos",
    tag="meetings",
    response=RecordOut,
)
async def get_record(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        meeting = await load_meeting(conn, p, request.match_info["notice_id"])
        data = await record_view(conn, str(meeting["notice_id"]))
    return json_response(RecordOut.model_validate(data).model_dump(mode="json"))


@routes.route(
    "PUT",
    "/v1/meetings/{notice_id}/minutes",
    summary="Write the minutes, at the venue on the meeting's day (with the device's position)",
    tag="meetings",
    body=MinutesIn,
    response=RecordOut,
    status=201,
    responses={200: Reply("replaced"), 422: REFUSED_422},
)
async def put_minutes(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    body = call.body_as(MinutesIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        meeting = await load_meeting(conn, p, request.match_info["notice_id"], write=True)
        notice_id = str(meeting["notice_id"])
        device, distance = check_place_and_day(meeting, body)
        created = await records.put_minutes(conn, notice_id, body.minutes, device, distance, p.key_id)
        await audit.record(
            conn, request, "meeting.minutes", "notice", notice_id, [p.scope_root], {"created": created}
        )
        data = await record_view(conn, notice_id)
    return json_response(
        RecordOut.model_validate(data).model_dump(mode="json"), status=201 if created else 200
    )


@routes.route(
    "POST",
    "/v1/meetings/{notice_id}/record/photos",
    summary="Upload a site photo (the raw JPEG or PNG body), at the venue on the meeting's day",
    tag="meetings",
    query=DevicePosition,
    response=PhotoOut,
    status=201,
    raw_body=photos.ACCEPTED,
    responses={
        200: Reply("these bytes are stored for this meeting already: the stored photo"),
        422: REFUSED_422 + "; the body is not a JPEG or PNG (by its magic bytes, whatever its "
        f"Content-Type); the meeting holds {records.MAX_PHOTOS} photos already",
    },
)
async def add_photo(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    at = call.query_as(DevicePosition)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        # Judged before the body is read: a refused upload is not even buffered.
        meeting = await load_meeting(conn, p, request.match_info["notice_id"], write=True)
        check_place_and_day(meeting, at)
    data, kind = await read_photo(request)
    async with deps.pool.acquire() as conn, conn.transaction():
        # Again inside the transaction: the day may have ended while the body arrived.
        meeting = await load_meeting(conn, p, request.match_info["notice_id"], write=True)
        notice_id = str(meeting["notice_id"])
        device, distance = check_place_and_day(meeting, at)
        await records.lock_meeting(conn, notice_id)
        row = await records.add_photo(
            conn, notice_id, photos.digest(data), kind, data, device, distance, p.key_id
        )
        if row["created"] and await records.count_photos(conn, notice_id) > records.MAX_PHOTOS:
            raise invalid("body", f"a meeting holds at most {records.MAX_PHOTOS} photos")  # rolls back
        if row["created"]:
            await audit.record(
                conn,
                request,
                "meeting.photo",
                "notice",
                notice_id,
                [p.scope_root],
                {"photo_id": str(row["id"]), "size": len(data)},
            )
    out = PhotoOut.model_validate(records.as_photo(notice_id, row)).model_dump(mode="json")
    return json_response(out, status=201 if row["created"] else 200, headers={"Location": out["url"]})


@routes.route(
    "GET",
    "/v1/meetings/{notice_id}/record/photos/{photo_id}",
    summary="A site photo, as stored (strong ETag: its SHA-256)",
    tag="meetings",
    media="image/jpeg",
    alternatives={"image/png": {"type": "string", "format": "binary"}},
    responses={304: Reply("If-None-Match named this photo's ETag", media=None)},
)
async def get_photo(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    photo_id = parse_uuid(request.match_info["photo_id"])
    async with deps.pool.acquire() as conn:
        meeting = await load_meeting(conn, p, request.match_info["notice_id"])
        row = None if photo_id is None else await records.get_photo(conn, str(meeting["notice_id"]), photo_id)
    if row is None:
        raise not_found("photo")
    return photo_response(request, row)


def photo_response(request: web.Request, row: Record) -> web.Response:
    """A stored photo (its type as stored, ``nosniff``, its SHA-256 as a strong ETag; 304 when
    If-None-Match names it): the record's photos and the check-in photos alike."""
    tag = photos.etag(bytes(row["sha256"]))
    headers = {
        "ETag": tag,
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "inline",
    }
    wanted = request.headers.get("If-None-Match", "")
    if tag in (t.strip() for t in wanted.split(",")) or wanted.strip() == "*":
        return web.Response(status=304, headers=headers)
    return web.Response(body=bytes(row["data"]), content_type=row["content_type"], headers=headers)
