"""The meeting record: minutes and photos taken at the venue on the meeting's day, refused (with
the reason, nothing stored) anywhere or any day else; photos by their magic bytes, at most 5 MB,
deduplicated, served in scope only; attendance with absences (请假); BOLA on every endpoint.

The organisation (tests/api/conftest.py)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.domain.photos import MAX_PHOTO_BYTES
from tests.api.conftest import Org, issue_key, problem
from tests.api.recordsenv import make_meeting, near
from tests.conftest import advance_clock, auth
from tests.helpers import get, put

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(200)) + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(100))
GIF = b"GIF89a\x01\x00\x01\x00" + bytes(50)
HTML = b"<!doctype html><html><script>alert(document.cookie)</script></html>"


async def upload(
    client: TestClient[Any, Any],
    notice_id: str,
    data: Any,
    token: str,
    where: dict[str, Any] | None = None,
    content_type: str = "image/jpeg",
) -> Any:
    return await client.post(
        f"/v1/meetings/{notice_id}/record/photos",
        params=where or near(50),
        data=data,
        headers={**auth(token), "Content-Type": content_type},
    )


async def stored(db: asyncpg.Connection) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM meeting_photos"),
        await db.fetchval("SELECT count(*) FROM meeting_records"),
    )


async def test_minutes_and_photos_taken_at_the_venue_are_stored_once_and_served_with_their_type(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    key = org.b1_secretary
    meeting = await make_meeting(client, db, unit="g1a", token=key)
    resp = await client.put(
        f"/v1/meetings/{meeting}/minutes",
        json={"minutes": "学习了党章", **near(40, "gcj02")},
        headers=auth(key),
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["minutes"] == "学习了党章"
    first = await upload(client, meeting, JPEG, key)
    assert first.status == 201, await first.text()
    photo = await first.json()
    assert photo["content_type"] == "image/jpeg" and photo["size"] == len(JPEG)
    # The same bytes again: the photo already stored, not a second copy.
    again = await upload(client, meeting, JPEG, key, near(80, "bd09"))
    assert again.status == 200 and (await again.json())["id"] == photo["id"]
    # A PNG sent as image/jpeg (a renamed file) is a PNG: the content decides.
    png = await upload(client, meeting, PNG, key, content_type="image/jpeg")
    assert png.status == 201 and (await png.json())["content_type"] == "image/png"
    record = await get(client, f"/v1/meetings/{meeting}/record", key)
    assert [p["content_type"] for p in record["photos"]] == ["image/jpeg", "image/png"]
    assert record["minutes"] == "学习了党章" and record["minutes_distance_m"] < 60
    served = await client.get(record["photos"][1]["url"], headers=auth(key))
    assert served.status == 200 and await served.read() == PNG
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    etag = served.headers["ETag"]
    assert etag == '"' + record["photos"][1]["sha256"] + '"'
    cached = await client.get(record["photos"][1]["url"], headers={**auth(key), "If-None-Match": etag})
    assert cached.status == 304 and await cached.read() == b""
    # The committee above sees it too.
    assert (await client.get(record["photos"][0]["url"], headers=auth())).status == 200
    assert await stored(db) == (2, 1)


async def test_a_record_outside_the_fence_or_the_meetings_day_is_refused_and_nothing_is_stored(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    key = org.b1_secretary
    meeting = await make_meeting(client, db, unit="g1a", token=key)
    far = await upload(client, meeting, JPEG, key, near(1000))
    body = await problem(
        far, 422, [{"field": "lat", "message": (await far.json(content_type=None))["detail"]}]
    )
    assert body["type"].endswith("/outside-venue") and "1000 m" in body["detail"]
    # GCJ-02 numbers reported as WGS-84 lie hundreds of metres off: refused, as they should be.
    wrong_datum = {**near(100, "gcj02"), "datum": "wgs84"}
    assert (await upload(client, meeting, JPEG, key, wrong_datum)).status == 422
    vague = await upload(client, meeting, JPEG, key, near(10, accuracy=500))
    assert (await problem(vague, 422))["type"].endswith("/low-accuracy")
    minutes = await client.put(
        f"/v1/meetings/{meeting}/minutes", json={"minutes": "x", **near(2000)}, headers=auth(key)
    )
    assert (await problem(minutes, 422))["type"].endswith("/outside-venue")
    # At the venue, but two days later by the server's clock.
    await advance_clock(db, 2 * 86400)
    late = await upload(client, meeting, JPEG, key)
    body = await problem(late, 422)
    assert body["type"].endswith("/outside-day") and body["errors"][0]["field"] == "time"
    minutes = await client.put(
        f"/v1/meetings/{meeting}/minutes", json={"minutes": "x", **near(10)}, headers=auth(key)
    )
    assert (await problem(minutes, 422))["type"].endswith("/outside-day")
    assert await stored(db) == (0, 0)


async def test_a_photo_is_judged_by_its_content_not_its_content_type(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    key = org.b1_secretary
    meeting = await make_meeting(client, db, unit="g1a", token=key)
    for data in (GIF, HTML, b""):
        resp = await upload(client, meeting, data, key, content_type="image/jpeg")
        assert (await problem(resp, 422))["errors"][0]["field"] == "body"
    assert await stored(db) == (0, 0)


async def test_an_oversize_photo_is_refused_before_it_is_buffered(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    key = org.b1_secretary
    meeting = await make_meeting(client, db, unit="g1a", token=key)
    big = JPEG[:4] + bytes(MAX_PHOTO_BYTES + 1 - 4)
    await problem(await upload(client, meeting, io.BytesIO(big), key), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies while reading
        yield JPEG[:4]
        for _ in range(MAX_PHOTO_BYTES // 65536 + 2):
            yield bytes(65536)

    await problem(await upload(client, meeting, chunks(), key), 413)
    assert await stored(db) == (0, 0)
    exactly = JPEG[:4] + bytes(MAX_PHOTO_BYTES - 4)
    assert (await upload(client, meeting, io.BytesIO(exactly), key)).status == 201


async def test_every_record_endpoint_answers_404_outside_the_callers_units(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    meeting = await make_meeting(client, db, unit="g1a", token=org.b1_secretary)
    photo = await (await upload(client, meeting, JPEG, org.b1_secretary)).json()
    other = org.b2_service
    for resp in (
        await client.get(f"/v1/meetings/{meeting}/record", headers=auth(other)),
        await client.get(photo["url"], headers=auth(other)),
        await client.put(
            f"/v1/meetings/{meeting}/minutes", json={"minutes": "x", **near(5)}, headers=auth(other)
        ),
        await upload(client, meeting, PNG, other),
        await client.get(f"/v1/meetings/{meeting}/attendance", headers=auth(other)),
        await client.put(f"/v1/meetings/{meeting}/absences/m1a", json={"reason": "x"}, headers=auth(other)),
        await client.delete(f"/v1/meetings/{meeting}/absences/m1a", headers=auth(other)),
        # A member of another branch cannot state a leave from it, for anyone.
        await client.put(
            f"/v1/meetings/{meeting}/absences/m2a", json={"reason": "x"}, headers=auth(org.m2a_member)
        ),
        await client.put(
            f"/v1/meetings/{meeting}/absences/m1a", json={"reason": "x"}, headers=auth(org.m2a_member)
        ),
        # A member of the meeting cannot state one for someone else.
        await client.put(
            f"/v1/meetings/{meeting}/absences/m1b", json={"reason": "x"}, headers=auth(org.m1a_member)
        ),
    ):
        await problem(resp, 404)
    # A photo id of one meeting does not open under another the caller sees.
    mine = await make_meeting(client, db, unit="g2a", token=other)
    await problem(
        await client.get(f"/v1/meetings/{mine}/record/photos/{photo['id']}", headers=auth(other)), 404
    )
    # Member keys do not read records at all.
    await problem(await client.get(photo["url"], headers=auth(org.m1a_member)), 403)
    assert await stored(db) == (1, 0)
    assert await db.fetchval("SELECT count(*) FROM meeting_absences") == 0


async def test_attendance_counts_the_checked_in_the_late_and_leaves_the_excused_out_of_the_rate(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    await put(client, "/v1/members/m1c", {"name": "Officer c", "units": ["g1a"]})
    await put(client, "/v1/members/m1d", {"name": "Officer d", "units": ["g1b"]})
    m1c = await issue_key(client, {"name": "m1c phone", "role": "member", "member_id": "m1c"})
    m1d = await issue_key(client, {"name": "m1d phone", "role": "member", "member_id": "m1d"})
    key = org.b1_secretary
    meeting = await make_meeting(client, db, unit="b1", token=key, starts=timedelta(minutes=10))
    # m1a states a leave and comes anyway; the secretary records m1b's; m1c is late; m1d tries
    # from 2 km away (refused) and stays away.
    resp = await client.put(
        f"/v1/meetings/{meeting}/absences/m1a", json={"reason": "出差"}, headers=auth(org.m1a_member)
    )
    assert resp.status == 201 and (await resp.json())["leave"]["by_member"] is True
    resp = await client.put(
        f"/v1/meetings/{meeting}/absences/m1b", json={"reason": "病假"}, headers=auth(key)
    )
    assert resp.status == 201 and (await resp.json())["leave"]["by_member"] is False

    async def checkin(token: str, metres: float) -> str:
        where = {k: float(v) if k != "datum" else v for k, v in near(metres).items()}
        resp = await client.post(f"/v1/meetings/{meeting}/checkins", json=where, headers=auth(token))
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["verdict"])

    assert await checkin(org.m1a_member, 30) == "ok"  # 10 minutes before the start
    assert await checkin(m1d, 2000) == "outside"
    await advance_clock(db, 12 * 60)
    assert await checkin(m1c, 30) == "ok"  # 2 minutes after it
    data = await get(client, f"/v1/meetings/{meeting}/attendance", key)
    assert {m["member_id"]: m["status"] for m in data["members"]} == {
        "m1a": "present",
        "m1b": "excused",
        "m1c": "late",
        "m1d": "absent",
    }
    assert data["summary"] == {
        "expected": 4,
        "present": 2,
        "late": 1,
        "excused": 1,
        "absent": 1,
        "rate": 0.6667,
    }
    excused = next(m for m in data["members"] if m["member_id"] == "m1b")
    assert excused["leave"]["reason"] == "病假"
    # One group's slice.
    g1b = await get(client, f"/v1/meetings/{meeting}/attendance?unit=g1b", key)
    assert sorted(m["member_id"] for m in g1b["members"]) == ["m1b", "m1d"]
    assert next(m for m in data["members"] if m["member_id"] == "m1d")["attempts"] == 1
    # After the meeting a member can no longer excuse themselves; the secretary still can.
    await advance_clock(db, 2 * 3600)
    late = await client.put(
        f"/v1/meetings/{meeting}/absences/m1d", json={"reason": "忘了"}, headers=auth(key)
    )
    assert late.status == 201
    resp = await client.delete(f"/v1/meetings/{meeting}/absences/m1d", headers=auth(key))
    assert resp.status == 204
    mine = await client.put(
        f"/v1/meetings/{meeting}/absences/m1a", json={"reason": "again"}, headers=auth(org.m1a_member)
    )
    await problem(mine, 422)
