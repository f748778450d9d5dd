"""A photo taken at check-in (POST /v1/meetings/{id}/checkins/{checkin_id}/photo): stored in the
records' photo store as a check-in photo, only on the member's own accepted check-in and within
the window; on a photo_required meeting the check-in is attendance and the read receipt only once
the photo is attached; served to the secretaries who see the check-in, 404 to a sibling branch.

The organisation (tests/api/conftest.py)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.domain import geo
from notifier.domain.photos import MAX_PHOTO_BYTES
from tests.api.conftest import Org, issue_key, problem
from tests.api.recordsenv import VENUE, make_meeting
from tests.conftest import advance_clock, auth
from tests.helpers import get

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(200)) + b"\xff\xd9"
JPEG2 = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(100, 250)) + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(100))
GIF = b"GIF89a\x01\x00\x01\x00" + bytes(50)


async def check_in(client: TestClient[Any, Any], meeting: str, key: str) -> dict[str, Any]:
    lat, lng = geo.destination(*VENUE, 45, 40)
    body = {"lat": lat, "lng": lng, "datum": "wgs84", "accuracy_m": 15}
    resp = await client.post(f"/v1/meetings/{meeting}/checkins", json=body, headers=auth(key))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    assert data["accepted"]
    return data


async def attach(
    client: TestClient[Any, Any],
    meeting: str,
    checkin: int,
    data: Any,
    key: str,
    content_type: str = "image/jpeg",
) -> Any:
    return await client.post(
        f"/v1/meetings/{meeting}/checkins/{checkin}/photo",
        data=data,
        headers={**auth(key), "Content-Type": content_type},
    )


async def status_of(client: TestClient[Any, Any], meeting: str, member: str) -> str:
    att = await get(client, f"/v1/meetings/{meeting}/attendance")
    return str(next(m["status"] for m in att["members"] if m["member_id"] == member))


async def test_photo_required_counts_the_checkin_only_with_its_photo(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    meeting = await make_meeting(client, db, unit="c", photo_required=True)
    mine = await check_in(client, meeting, org.m1a_member)
    theirs = await check_in(client, meeting, org.m2a_member)
    assert mine["photo_required"] and mine["pending_photo"] and not mine["counted"]
    assert "requires a photo" in mine["reason"] and mine["photo_url"] is None

    async def read_at(member: str) -> Any:
        return await db.fetchval(
            "SELECT read_at FROM recipients WHERE notice_id = $1 AND member_id = $2", meeting, member
        )

    assert await read_at("m1a") is None and await status_of(client, meeting, "m1a") == "absent"

    # Another member's check-in: not theirs to see or to prove.
    resp = await attach(client, meeting, theirs["id"], JPEG, org.m1a_member)
    assert resp.status == 404, await resp.text()
    resp = await attach(client, meeting, 999_999, JPEG, org.m1a_member)
    assert resp.status == 404
    # By the magic bytes, whatever the Content-Type says; at most 5 MB.
    resp = await attach(client, meeting, mine["id"], GIF, org.m1a_member)
    assert (await problem(resp, 422))["errors"][0]["field"] == "body"
    resp = await attach(
        client, meeting, mine["id"], io.BytesIO(JPEG[:12] + bytes(MAX_PHOTO_BYTES)), org.m1a_member
    )
    assert resp.status == 413, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM meeting_photos") == 0
    assert await read_at("m1a") is None

    # The photo arrives: now it is attendance, and the read receipt.
    resp = await attach(client, meeting, mine["id"], PNG, org.m1a_member, content_type="image/jpeg")
    assert resp.status == 201, await resp.text()
    done = await resp.json()
    assert done["counted"] and not done["pending_photo"] and resp.headers["Location"] == done["photo_url"]
    row = await db.fetchrow(
        "SELECT read_via, read_at FROM recipients WHERE notice_id = $1 AND member_id = 'm1a'", meeting
    )
    assert row is not None and row["read_via"] == "checkin" and row["read_at"] is not None
    assert await status_of(client, meeting, "m1a") == "late"  # checked in 10 min after the start
    assert await status_of(client, meeting, "m2a") == "absent"  # still pending
    # The same bytes again answer the check-in; another photo does not replace it.
    again = await attach(client, meeting, mine["id"], PNG, org.m1a_member)
    assert again.status == 200 and (await again.json())["photo_url"] == done["photo_url"]
    resp = await attach(client, meeting, mine["id"], JPEG, org.m1a_member)
    assert (await problem(resp, 409))["type"].endswith("checkin-has-photo")
    # One photo proves one member's presence: m2a cannot reuse it.
    resp = await attach(client, meeting, theirs["id"], PNG, org.m2a_member)
    assert (await problem(resp, 409))["type"].endswith("photo-reused")

    # Not the secretary's site photo: the record does not list it, nor serve it as one.
    assert (await get(client, f"/v1/meetings/{meeting}/record"))["photos"] == []
    photo_id = await db.fetchval("SELECT photo_id FROM meeting_checkins WHERE id = $1", mine["id"])
    resp = await client.get(
        f"/v1/meetings/{meeting}/record/photos/{photo_id}", headers=auth(org.b1_secretary)
    )
    assert resp.status == 404

    # The branch's secretary sees it in the list and fetches it; the sibling branch's does not.
    listed = await get(client, f"/v1/meetings/{meeting}/checkins", org.b1_secretary)
    assert [c["photo_url"] for c in listed["items"]] == [done["photo_url"]]
    resp = await client.get(done["photo_url"], headers=auth(org.b1_secretary))
    assert resp.status == 200 and await resp.read() == PNG and resp.content_type == "image/png"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    b2 = await issue_key(client, {"name": "b2 desk", "role": "secretary", "unit_id": "b2"})
    resp = await client.get(done["photo_url"], headers=auth(b2))
    assert resp.status == 404
    resp = await client.get(done["photo_url"], headers=auth(org.m2a_member))
    assert resp.status == 404
    resp = await client.get(done["photo_url"], headers=auth(org.m1a_member))
    assert resp.status == 200

    # After the window closes (the server's clock), a photo is refused; m2a stays uncounted.
    await advance_clock(db, 30 * 60)
    resp = await attach(client, meeting, theirs["id"], JPEG2, org.m2a_member)
    assert (await problem(resp, 409))["type"].endswith("checkin-window-closed")
    assert await status_of(client, meeting, "m2a") == "absent"
    assert await read_at("m2a") is None
    assert await db.fetchval("SELECT count(*) FROM meeting_photos") == 1


async def test_without_photo_required_the_checkin_counts_and_a_photo_is_optional(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    meeting = await make_meeting(client, db, unit="g1a")
    mine = await check_in(client, meeting, org.m1a_member)
    assert mine["counted"] and not mine["pending_photo"] and not mine["photo_required"]
    assert await status_of(client, meeting, "m1a") == "late"  # checked in 10 min after the start
    resp = await attach(client, meeting, mine["id"], JPEG, org.m1a_member)
    assert resp.status == 201, await resp.text()
    assert await db.fetchval("SELECT kind FROM meeting_photos") == "checkin"
    # A member not invited to the meeting: 404, nothing read.
    resp = await attach(client, meeting, mine["id"], JPEG2, org.m2a_member)
    assert resp.status == 404


async def test_two_members_sending_one_photo_at_once_one_is_refused(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    meeting = await make_meeting(client, db, unit="c", photo_required=True)
    mine = await check_in(client, meeting, org.m1a_member)
    theirs = await check_in(client, meeting, org.m2a_member)
    answers = await asyncio.gather(
        attach(client, meeting, mine["id"], JPEG, org.m1a_member),
        attach(client, meeting, theirs["id"], JPEG, org.m2a_member),
    )
    assert sorted(r.status for r in answers) == [201, 409]
    assert await db.fetchval("SELECT count(*) FROM meeting_checkins WHERE photo_id IS NOT NULL") == 1
