"""/v1/meetings/{id}/checkins/{checkin_id}/photo: a photo taken at check-in, attached by the member.

The member (their key, or the /m/ page as the member) sends the raw JPEG or PNG body for their own
accepted check-in -- anyone else's check-in, or a check-in that does not exist, is 404 -- while the
check-in window is open, judged by the server's clock (409 before it opens or after it closes).
The body is read as the record photos are (api/records.py ``read_photo``: 5 MB cap, 413; JPEG or
PNG by the magic bytes, 422) and stored in the same photo store (``meeting_photos``) as kind
``checkin``, which is not the secretary's record and does not count against its photo cap; the
photo's position is the check-in's own. One photo per check-in: the same bytes again answer the
check-in (200); another photo, or bytes already stored for this meeting (another member's
check-in photo, a site photo), is 409 -- one photo proves one member's presence.

**photo_required.** On such a meeting an accepted check-in without its photo is *pending*
(``pending_photo``): it is not attendance, the supervision report does not count it, and the
member's read receipt is recorded only with the photo, in the transaction that links it (the view
``meeting_presences``, schemas/0030_checkin_photos.sql, is the one home of that rule). On other
meetings a photo is optional and changes nothing but the record.

The photo is served (``GET``) to the member themself and to callers who see the check-in in the
list (``GET /v1/meetings/{id}/checkins``: the meeting's secretaries, within their slice); anyone
else gets 404.
"""

from __future__ import annotations

from aiohttp import web

from notifier.api.checkins import CheckinOut, checkin_out, meeting_for_member
from notifier.api.keys import DEPS, principal
from notifier.api.meetings import load_meeting
from notifier.api.problems import Problem, not_found
from notifier.api.records import photo_response, read_photo
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.stream import WATCHERS
from notifier.db import meetings, receipts, records
from notifier.db.pool import Connection, Record
from notifier.domain import photos

routes = Router()


def _checkin_id(request: web.Request) -> int:
    text = request.match_info["checkin_id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise not_found("check-in")
    return int(text)


def _in_window(meeting: Record) -> None:
    now, opens, closes = meeting["now"], meeting["checkin_opens_at"], meeting["checkin_closes_at"]
    if now < opens or now > closes:
        raise Problem(
            409,
            "Conflict",
            f"a check-in photo is taken during the check-in window ({opens.isoformat()} to "
            f"{closes.isoformat()}, by the server's clock)",
            type_="checkin-window-closed",
        )


async def _own_checkin(conn: Connection, meeting: Record, checkin_id: int, member_id: str) -> Record:
    row = await meetings.checkin(conn, str(meeting["notice_id"]), checkin_id, None, member_id)
    if row is None:
        raise not_found("check-in")
    if row["verdict"] != "ok":
        raise Problem(
            409, "Conflict", "a photo is attached to an accepted check-in only", type_="checkin-not-accepted"
        )
    return row


@routes.route(
    "POST",
    "/v1/meetings/{notice_id}/checkins/{checkin_id}/photo",
    summary="Attach a photo taken at check-in (member; the raw JPEG or PNG body, within the window)",
    tag="meetings",
    response=CheckinOut,
    status=201,
    raw_body=photos.ACCEPTED,
    responses={
        200: Reply("these bytes are this check-in's photo already: the check-in"),
        409: "outside the check-in window (the server's clock); the check-in was refused; it has "
        "another photo; these bytes are stored for this meeting already (another check-in or a site "
        "photo); the meeting's notice is not fanned out yet or was recalled",
        422: "the body is not a JPEG or PNG (by its magic bytes, whatever its Content-Type)",
    },
)
async def attach_photo(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("member")
    assert p.member_id is not None
    checkin_id = _checkin_id(request)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        # Judged before the body is read: a refused upload is not even buffered.
        meeting = await meeting_for_member(conn, request.match_info["notice_id"], p.member_id)
        _in_window(meeting)
        await _own_checkin(conn, meeting, checkin_id, p.member_id)
    data, kind = await read_photo(request)
    async with deps.pool.acquire() as conn, conn.transaction():
        # Again inside the transaction: the window may have closed while the body arrived.
        meeting = await meeting_for_member(conn, request.match_info["notice_id"], p.member_id)
        notice_id = str(meeting["notice_id"])
        _in_window(meeting)
        await meetings.lock_member(conn, notice_id, p.member_id)
        row = await _own_checkin(conn, meeting, checkin_id, p.member_id)
        digest = photos.digest(data)
        if row["photo_id"] is not None:
            same = await records.get_photo(conn, notice_id, str(row["photo_id"]), "checkin")
            if same is not None and bytes(same["sha256"]) == digest:
                return json_response(checkin_out(row, meeting, recorded=False), status=200)
            raise Problem(409, "Conflict", "this check-in has its photo already", type_="checkin-has-photo")
        await records.lock_photo_bytes(conn, notice_id, digest)  # two members sending one photo at once
        device = (row["lat"], row["lng"], row["datum"], row["accuracy_m"])
        photo = await records.add_photo(
            conn, notice_id, digest, kind, data, device, row["distance_m"], p.key_id, kind="checkin"
        )
        if not photo["created"]:
            raise Problem(
                409,
                "Conflict",
                "this photo is stored for this meeting already: take a new one",
                type_="photo-reused",
            )
        linked = await meetings.link_photo(conn, notice_id, checkin_id, str(photo["id"]))
        assert linked is not None  # the member's lock: nothing linked another photo meanwhile
        read = meeting["photo_required"] and await receipts.mark_read(conn, notice_id, p.member_id, "checkin")
    if read:
        request.app[WATCHERS].changed(notice_id)
    else:
        request.app[WATCHERS].hint(notice_id)
    out = checkin_out(linked, meeting, recorded=True)
    return json_response(out, status=201, headers={"Location": str(out["photo_url"])})


@routes.route(
    "GET",
    "/v1/meetings/{notice_id}/checkins/{checkin_id}/photo",
    summary="The photo attached to a check-in (its member; secretaries who see the check-in)",
    tag="meetings",
    media="image/jpeg",
    alternatives={"image/png": {"type": "string", "format": "binary"}},
    responses={304: Reply("If-None-Match named this photo's ETag", media=None)},
)
async def get_checkin_photo(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    checkin_id = _checkin_id(request)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        meeting, seen = await load_meeting(conn, p, request.match_info["notice_id"])
        notice_id = str(meeting["notice_id"])
        mine = p.member_id if p.role == "member" else None
        row = await meetings.checkin(conn, notice_id, checkin_id, seen["slice_root"], mine)
        photo = None
        if row is not None and row["photo_id"] is not None:
            photo = await records.get_photo(conn, notice_id, str(row["photo_id"]), "checkin")
    if photo is None:
        raise not_found("photo")
    return photo_response(request, photo)
