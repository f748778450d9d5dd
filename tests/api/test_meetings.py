"""/v1/meetings and their check-ins on real PostgreSQL: a meeting is a notice of kind meeting; a
check-in is judged by place (in the venue's datum) and the server's clock; accepted ones are read
receipts; refused ones are kept with their reasons; retries are limited; BOLA on every endpoint.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.domain import geo
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.fanout import fanout_notice
from tests.api.conftest import Org, fields, issue_key, problem
from tests.conftest import advance_clock, auth, frozen_clock
from tests.helpers import worker_deps

Client = TestClient[Any, Any]
# The venue: Tiananmen, in WGS-84 (GPS, the browser).
VENUE = (39.9087, 116.3975)


@pytest.fixture
async def deps(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[WorkerDeps]:
    async with worker_deps(settings) as d:
        yield d


@pytest.fixture
async def m1b(client: Client, org: Org) -> str:
    """A member key for m1b (the org fixture has m1a's and m2a's)."""
    return await issue_key(client, {"name": "m1b phone", "role": "member", "member_id": "m1b"})


async def now(db: asyncpg.Connection) -> datetime:
    value = await db.fetchval("SELECT notifier_now()")
    assert isinstance(value, datetime)
    return value


def meeting_body(start: datetime, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "group_meeting",
        "title": "党小组会",
        "unit_id": "b1",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=1)).isoformat(),
        "venue": {"lat": VENUE[0], "lng": VENUE[1], "datum": "wgs84", "name": "Room 101"},
    }
    body.update(extra)
    return body


async def create(
    client: Client, deps: WorkerDeps, body: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    resp = await client.post("/v1/meetings", json=body, headers=auth(token) if token else auth())
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    await fanout_notice(deps, data["id"])
    return data


async def check_in(client: Client, mid: str, token: str, **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"/v1/meetings/{mid}/checkins", json=body, headers=auth(token))
    data: dict[str, Any] = await resp.json(content_type=None)
    return resp.status, data


def at(distance: float, bearing: float = 90.0) -> tuple[float, float]:
    """A WGS-84 point ``distance`` metres from the venue."""
    return geo.destination(VENUE[0], VENUE[1], bearing, distance)


async def test_create_get_and_list(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org, m1b: str
) -> None:
    start = await now(db) + timedelta(hours=1)
    body = meeting_body(start, bssids=["AA-BB-CC-DD-EE-FF", "aabb.ccdd.eeff", "11:22:33:44:55:66"])
    data = await create(client, deps, body, org.b1_secretary)
    assert data["type"] == "group_meeting" and data["unit_id"] == "b1"
    assert data["radius_m"] == 300 and data["max_accuracy_m"] == 150 and data["photo_required"] is False
    # the documented window: 30 minutes before the start to 15 after
    assert datetime.fromisoformat(data["checkin_opens_at"]) == start - timedelta(minutes=30)
    assert datetime.fromisoformat(data["checkin_closes_at"]) == start + timedelta(minutes=15)
    assert data["bssids"] == ["aa:bb:cc:dd:ee:ff", "11:22:33:44:55:66"]  # normalised, once each
    assert data["venue"] == {"lat": VENUE[0], "lng": VENUE[1], "datum": "wgs84", "name": "Room 101"}
    notice = await db.fetchrow("SELECT kind, audience, expires_at FROM notices WHERE id = $1", data["id"])
    assert notice is not None
    assert notice["kind"] == "meeting" and json.loads(notice["audience"]) == {"units": ["b1"], "members": []}
    assert notice["expires_at"] == start + timedelta(hours=1)  # no reminders once it is over

    got = await (await client.get(f"/v1/meetings/{data['id']}", headers=auth(org.b1_secretary))).json()
    assert got["notice"]["counts"]["recipients"] == 2  # m1a, m1b
    assert got["checkins"] == {"accepted": 0, "flagged": 0, "rejected": 0}
    listed = await (await client.get("/v1/meetings", headers=auth(org.b1_secretary))).json()
    assert [m["id"] for m in listed["items"]] == [data["id"]]
    # a member sees the meeting they were invited to, without the venue's Wi-Fi list
    mine = await (await client.get(f"/v1/meetings/{data['id']}", headers=auth(org.m1a_member))).json()
    assert mine["bssids"] is None and mine["notice"] is None

    types = await (await client.get("/v1/meeting-types", headers=auth(org.b1_secretary))).json()
    assert [t["code"] for t in types["items"]] == [
        "party_congress",
        "branch_committee",
        "group_meeting",
        "party_lecture",
        "theme_day",
    ]
    assert types["items"][2]["name"] == "党小组会"


async def test_list_pages_by_start(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    base = await now(db) + timedelta(days=1)
    ids = [(await create(client, deps, meeting_body(base + timedelta(days=i))))["id"] for i in range(3)]
    page = await (await client.get("/v1/meetings?limit=2", headers=auth())).json()
    assert [m["id"] for m in page["items"]] == ids[:2] and page["next_cursor"]
    rest = await (
        await client.get(f"/v1/meetings?limit=2&cursor={page['next_cursor']}", headers=auth())
    ).json()
    assert [m["id"] for m in rest["items"]] == ids[2:] and rest["next_cursor"] is None
    resp = await client.get("/v1/meetings?cursor=bm9wZQ", headers=auth())
    assert fields(await problem(resp, 422)) == ["query.cursor"]


BAD_MEETINGS: list[tuple[dict[str, Any], str]] = [
    ({"venue": {"lat": 91, "lng": 116.4, "datum": "wgs84"}}, "venue.lat"),
    ({"venue": {"lat": 39.9, "lng": 116.4, "datum": "wgs72"}}, "venue.datum"),
    ({"radius_m": 99}, "radius_m"),
    ({"radius_m": 3001}, "radius_m"),
    ({"type": "tea_party"}, "type"),
    ({"unit_id": "b2"}, "unit_id"),  # outside the secretary's reach
    ({"bssids": ["not-a-mac"]}, "bssids[0]"),
    ({"ends_at": "START"}, "ends_at"),
    ({"checkin_closes_at": "START-1h"}, "checkin_closes_at"),
    ({"checkin_opens_at": "START+2h"}, "checkin_opens_at"),
    ({"send_at": "START+2h"}, "send_at"),
    ({"max_accuracy_m": 0}, "max_accuracy_m"),
    ({"channels": ["pigeon"]}, "channels[0]"),
]


async def test_bad_meetings_name_the_field_and_store_nothing(
    client: Client, db: asyncpg.Connection, org: Org
) -> None:
    start = await now(db) + timedelta(hours=1)
    shifts = {"START": timedelta(0), "START-1h": -timedelta(hours=1), "START+2h": timedelta(hours=2)}
    for change, field in BAD_MEETINGS:
        body = meeting_body(start)
        for key, value in change.items():
            shifted = isinstance(value, str) and value in shifts
            body[key] = (start + shifts[value]).isoformat() if shifted else value
        resp = await client.post("/v1/meetings", json=body, headers=auth(org.b1_secretary))
        assert field in fields(await problem(resp, 422)), change
    assert await db.fetchval("SELECT count(*) FROM meetings") == 0
    assert await db.fetchval("SELECT count(*) FROM notices") == 0


async def test_idempotency_key_replays_the_meeting(client: Client, db: asyncpg.Connection, org: Org) -> None:
    body = meeting_body(await now(db) + timedelta(hours=1))
    headers = {**auth(org.b1_secretary), "Idempotency-Key": "meeting-1"}
    first = await client.post("/v1/meetings", json=body, headers=headers)
    assert first.status == 201, await first.text()
    again = await client.post("/v1/meetings", json=body, headers=headers)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == (await first.json())["id"]
    assert await db.fetchval("SELECT count(*) FROM meetings") == 1


async def test_mixed_datums_at_the_boundary(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org, m1b: str
) -> None:
    """The issue's case: a venue stored in WGS-84, a phone 250 m away reporting GCJ-02. Converted it
    is inside the 300 m fence; compared raw, the datum's offset would put it far outside."""
    data = await create(client, deps, meeting_body(await now(db) + timedelta(minutes=10)))
    wgs = at(250.0)
    gcj = geo.to_datum(*wgs, "wgs84", "gcj02")
    raw = geo.distance_m(*gcj, *VENUE)
    assert raw - 20 > 300  # the test means something: without conversion it is outside
    status, out = await check_in(
        client, data["id"], org.m1a_member, lat=gcj[0], lng=gcj[1], datum="gcj02", accuracy_m=20
    )
    assert status == 201, out
    assert (out["verdict"], out["accepted"], out["flagged"]) == ("ok", True, False)
    assert out["distance_m"] == pytest.approx(250.0, abs=0.5)
    assert (out["radius_m"], out["venue_datum"], out["datum"]) == (300, "wgs84", "gcj02")
    # The same numbers claimed as WGS-84 are where they say: outside.
    status, wrong = await check_in(
        client, data["id"], m1b, lat=gcj[0], lng=gcj[1], datum="wgs84", accuracy_m=20
    )
    assert status == 201 and wrong["verdict"] == "outside" and not wrong["accepted"]
    assert (
        wrong["distance_m"] == pytest.approx(raw, abs=0.5) and "outside the 300 m radius" in wrong["reason"]
    )
    # BD-09 from Baidu converts too
    bd = geo.to_datum(*wgs, "wgs84", "bd09")
    row = await db.fetchrow(
        "SELECT read_at, read_via FROM recipients WHERE notice_id = $1 AND member_id = 'm1a'", data["id"]
    )
    assert row is not None and row["read_at"] is not None and row["read_via"] == "checkin"  # the receipt
    assert (
        await db.fetchval(
            "SELECT read_at FROM recipients WHERE notice_id = $1 AND member_id = 'm1b'", data["id"]
        )
        is None
    )
    counts = (await (await client.get(f"/v1/notices/{data['id']}", headers=auth())).json())["counts"]
    assert counts["read"] == 1
    status, retry = await check_in(client, data["id"], m1b, lat=bd[0], lng=bd[1], datum="bd09", accuracy_m=20)
    assert status == 201 and retry["verdict"] == "ok" and retry["distance_m"] == pytest.approx(250.0, abs=0.5)


async def test_accuracy_and_the_grey_zone(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    cases = [
        (290, 10, "ok", False),
        (320, 30, "ok", True),  # the grey zone: beyond the radius, within the accuracy -> flagged
        (340, 30, "outside", False),  # distance - accuracy > radius
        (200, 151, "low_accuracy", False),  # worse than the 150 m setting
        (900, 500, "outside", False),  # too coarse to place inside, precise enough to place outside
    ]
    for distance, accuracy, verdict, flagged in cases:
        data = await create(client, deps, meeting_body(await now(db) + timedelta(minutes=10)))
        lat, lng = at(distance, 200.0)
        status, out = await check_in(
            client, data["id"], org.m1a_member, lat=lat, lng=lng, datum="wgs84", accuracy_m=accuracy
        )
        assert status == 201
        assert (out["verdict"], out["flagged"], out["accepted"]) == (verdict, flagged, verdict == "ok")
        assert out["distance_m"] == pytest.approx(distance, abs=0.5) and out["accuracy_m"] == accuracy
        if flagged:
            assert "flagged for review" in out["reason"]


async def test_time_is_judged_by_the_server_clock(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org, m1b: str
) -> None:
    async with frozen_clock(db):
        start = await now(db) + timedelta(hours=2)
        data = await create(client, deps, meeting_body(start))
        lat, lng = at(50)
        inside = {"lat": lat, "lng": lng, "datum": "wgs84", "accuracy_m": 10}
        # The phone's clock says the meeting has started; the server's says it is two hours off.
        status, early = await check_in(
            client, data["id"], org.m1a_member, **inside, client_time=start.isoformat()
        )
        assert status == 201 and early["verdict"] == "too_early"
        assert early["window"]["opens_at"] == data["checkin_opens_at"] and "opens at" in early["reason"]
        assert datetime.fromisoformat(early["client_time"]) == start  # stored, not judged
        await advance_clock(db, 90 * 60)  # the window opens (both ends inclusive)
        status, ok = await check_in(client, data["id"], org.m1a_member, **inside)
        assert status == 201 and ok["verdict"] == "ok"
        assert datetime.fromisoformat(ok["at"]) == start - timedelta(minutes=30)
        await advance_clock(db, 45 * 60 + 1)  # a second after it closed (15 min after the start)
        status, late = await check_in(client, data["id"], m1b, **inside, client_time=start.isoformat())
        assert status == 201 and late["verdict"] == "too_late" and "closed at" in late["reason"]


async def test_mock_location_and_wifi(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org, m1b: str
) -> None:
    body = meeting_body(await now(db) + timedelta(minutes=10), bssids=["AA:BB:CC:DD:EE:FF"])
    data = await create(client, deps, body)
    far = at(5000)
    # On the venue's Wi-Fi (written another way): accepted whatever the coordinates say ...
    status, wifi = await check_in(
        client,
        data["id"],
        org.m1a_member,
        lat=far[0],
        lng=far[1],
        datum="wgs84",
        accuracy_m=2000,
        bssid="aa-bb-cc-dd-ee-ff",
    )
    assert status == 201 and (wifi["verdict"], wifi["bssid_matched"]) == ("ok", True)
    assert wifi["reason"] == "on the venue's Wi-Fi"
    # ... but not from a mock location, even on the Wi-Fi and at the venue
    near = at(10)
    status, mock = await check_in(
        client,
        data["id"],
        m1b,
        lat=near[0],
        lng=near[1],
        datum="wgs84",
        accuracy_m=5,
        mock=True,
        bssid="aabbccddeeff",
    )
    assert status == 201 and mock["verdict"] == "mock_location" and not mock["accepted"]
    # another Wi-Fi does not help
    status, other = await check_in(
        client,
        data["id"],
        m1b,
        lat=far[0],
        lng=far[1],
        datum="wgs84",
        accuracy_m=20,
        bssid="00:11:22:33:44:55",
    )
    assert status == 201 and (other["verdict"], other["bssid_matched"]) == ("outside", False)
    status, bad = await check_in(
        client, data["id"], m1b, lat=far[0], lng=far[1], datum="wgs84", accuracy_m=20, bssid="wifi"
    )
    assert fields(bad) == ["bssid"] and status == 422


async def test_retries_idempotent_acceptance_and_limits(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org, settings: Settings
) -> None:
    data = await create(client, deps, meeting_body(await now(db) + timedelta(minutes=10)))
    mid = data["id"]
    far, near = at(1000), at(40)
    out_body = {"lat": far[0], "lng": far[1], "datum": "wgs84", "accuracy_m": 10}
    in_body = {"lat": near[0], "lng": near[1], "datum": "wgs84", "accuracy_m": 10}
    per_minute = settings.checkin_attempts_per_minute
    for _ in range(per_minute):
        status, out = await check_in(client, mid, org.m1a_member, **out_body)
        assert status == 201 and out["verdict"] == "outside"
    resp = await client.post(f"/v1/meetings/{mid}/checkins", json=in_body, headers=auth(org.m1a_member))
    assert resp.status == 429 and resp.content_type == "application/problem+json"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    await advance_clock(db, 61)
    status, ok = await check_in(client, mid, org.m1a_member, **in_body)  # a retry within the window
    assert status == 201 and ok["verdict"] == "ok" and ok["recorded"]
    # A second check-in answers the first, even one from elsewhere; nothing more is stored.
    status, again = await check_in(client, mid, org.m1a_member, **out_body)
    assert status == 200 and again["id"] == ok["id"] and not again["recorded"] and again["verdict"] == "ok"
    assert (
        await db.fetchval("SELECT count(*) FROM meeting_checkins WHERE member_id = 'm1a'") == per_minute + 1
    )
    # The secretary sees every attempt, refused ones with their reasons.
    page = await (await client.get(f"/v1/meetings/{mid}/checkins", headers=auth(org.b1_secretary))).json()
    assert [c["verdict"] for c in page["items"]] == ["outside"] * per_minute + ["ok"]
    assert page["items"][0]["member_name"] == "Officer g1a" and "outside" in page["items"][0]["reason"]
    accepted = await (
        await client.get(f"/v1/meetings/{mid}/checkins?outcome=accepted", headers=auth())
    ).json()
    assert [c["id"] for c in accepted["items"]] == [ok["id"]]
    paged = await (await client.get(f"/v1/meetings/{mid}/checkins?limit=4", headers=auth())).json()
    rest = await (
        await client.get(f"/v1/meetings/{mid}/checkins?cursor={paged['next_cursor']}", headers=auth())
    ).json()
    assert [c["id"] for c in paged["items"] + rest["items"]] == [c["id"] for c in page["items"]]
    got = await (await client.get(f"/v1/meetings/{mid}", headers=auth())).json()
    assert got["checkins"] == {"accepted": 1, "flagged": 0, "rejected": per_minute}


async def test_attempts_per_meeting_are_capped(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org, settings: Settings
) -> None:
    data = await create(client, deps, meeting_body(await now(db) + timedelta(minutes=10)))
    far = at(1000)
    body = {"lat": far[0], "lng": far[1], "datum": "wgs84", "accuracy_m": 10}
    for i in range(settings.checkin_attempts_max):
        if i and i % settings.checkin_attempts_per_minute == 0:
            await advance_clock(db, 61)
        status, _ = await check_in(client, data["id"], org.m1a_member, **body)
        assert status == 201
    await advance_clock(db, 61)
    resp = await client.post(f"/v1/meetings/{data['id']}/checkins", json=body, headers=auth(org.m1a_member))
    assert resp.status == 429
    assert (await resp.json(content_type=None))["type"].endswith("checkin-attempts-exhausted")


async def test_bola_on_every_endpoint(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    data = await create(client, deps, meeting_body(await now(db) + timedelta(minutes=10)), org.b1_secretary)
    mid = data["id"]
    near = at(10)
    body = {"lat": near[0], "lng": near[1], "datum": "wgs84", "accuracy_m": 10}
    b2_secretary = await issue_key(client, {"name": "b2 desk", "role": "secretary", "unit_id": "b2"})
    # Another branch: the meeting does not exist for it, nor for a member not invited.
    for token in (b2_secretary, org.b2_service):
        await problem(await client.get(f"/v1/meetings/{mid}", headers=auth(token)), 404)
        await problem(await client.get(f"/v1/meetings/{mid}/checkins", headers=auth(token)), 404)
        assert (await (await client.get("/v1/meetings", headers=auth(token))).json())["items"] == []
    await problem(await client.get(f"/v1/meetings/{mid}", headers=auth(org.m2a_member)), 404)
    resp = await client.post(f"/v1/meetings/{mid}/checkins", json=body, headers=auth(org.m2a_member))
    await problem(resp, 404)
    assert await db.fetchval("SELECT count(*) FROM meeting_checkins") == 0
    # Check-ins are the member's own: a secretary or service key cannot check in for them ...
    for token in (org.b1_secretary, org.b1_service):
        await problem(await client.post(f"/v1/meetings/{mid}/checkins", json=body, headers=auth(token)), 403)
    # ... and a member sees only their own attempts, and cannot list meetings.
    await problem(await client.get(f"/v1/meetings/{mid}/checkins", headers=auth(org.m2a_member)), 404)
    await problem(await client.get("/v1/meetings", headers=auth(org.m1a_member)), 403)
    # Creating: a member cannot; a secretary cannot hold one in another branch or invite its members.
    await problem(
        await client.post(
            "/v1/meetings",
            json=meeting_body(datetime.fromisoformat(data["starts_at"])),
            headers=auth(org.m1a_member),
        ),
        403,
    )
    other = meeting_body(datetime.fromisoformat(data["starts_at"]), audience={"members": ["m2a"]})
    resp = await client.post("/v1/meetings", json=other, headers=auth(org.b1_secretary))
    assert fields(await problem(resp, 422)) == ["audience.members[0]"]
    # Meeting types: only an admin changes them.
    resp = await client.put("/v1/meeting-types/tea", json={"name": "茶话会"}, headers=auth(org.b1_secretary))
    await problem(resp, 403)
    # A committee meeting reaching both branches: b2's secretary sees only b2's check-ins.
    c_meeting = await create(
        client,
        deps,
        meeting_body(datetime.fromisoformat(data["starts_at"]), unit_id="c", type="party_lecture"),
    )
    for token in (org.m1a_member, org.m2a_member):
        status, out = await check_in(client, c_meeting["id"], token, **body)
        assert status == 201 and out["verdict"] == "ok"
    seen = await (
        await client.get(f"/v1/meetings/{c_meeting['id']}/checkins", headers=auth(b2_secretary))
    ).json()
    assert [c["member_id"] for c in seen["items"]] == ["m2a"]
    got = await (await client.get(f"/v1/meetings/{c_meeting['id']}", headers=auth(b2_secretary))).json()
    assert got["checkins"]["accepted"] == 1 and got["notice"]["counts"]["recipients"] == 2
    everyone = await (await client.get(f"/v1/meetings/{c_meeting['id']}/checkins", headers=auth())).json()
    assert sorted(c["member_id"] for c in everyone["items"]) == ["m1a", "m2a"]
    path = f"/v1/meetings/{c_meeting['id']}/checkins?member=m1a"
    own = await (await client.get(path, headers=auth(org.m2a_member))).json()
    assert [c["member_id"] for c in own["items"]] == ["m2a"]  # ?member= cannot widen a member's view


async def test_meeting_types_are_configurable(client: Client, db: asyncpg.Connection, org: Org) -> None:
    try:
        resp = await client.put(
            "/v1/meeting-types/study_session", json={"name": "学习会", "position": 9}, headers=auth()
        )
        assert resp.status == 201, await resp.text()
        resp = await client.put(
            "/v1/meeting-types/study_session", json={"name": "专题学习会", "position": 9}, headers=auth()
        )
        assert resp.status == 200 and (await resp.json())["name"] == "专题学习会"
        body = meeting_body(await now(db) + timedelta(hours=1), type="study_session")
        resp = await client.post("/v1/meetings", json=body, headers=auth(org.b1_secretary))
        assert resp.status == 201, await resp.text()
        resp = await client.put("/v1/meeting-types/Bad-Code", json={"name": "x"}, headers=auth())
        assert fields(await problem(resp, 422)) == ["type_code"]
    finally:  # meeting types are not reset between tests
        await db.execute("DELETE FROM meetings WHERE type = 'study_session'")
        await db.execute("DELETE FROM meeting_types WHERE code = 'study_session'")


async def test_checkin_before_the_notice_reaches_the_member(
    client: Client, db: asyncpg.Connection, org: Org
) -> None:
    resp = await client.post(
        "/v1/meetings", json=meeting_body(await now(db) + timedelta(minutes=10)), headers=auth()
    )
    mid = (await resp.json())["id"]
    near = at(10)
    resp = await client.post(
        f"/v1/meetings/{mid}/checkins",
        json={"lat": near[0], "lng": near[1], "datum": "wgs84", "accuracy_m": 10},
        headers=auth(org.m1a_member),
    )
    await problem(resp, 409)
    assert resp.headers["Retry-After"] == "1"


async def test_a_recalled_meeting_takes_no_check_ins(
    client: Client, db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    data = await create(client, deps, meeting_body(await now(db) + timedelta(minutes=10)))
    resp = await client.post(f"/v1/notices/{data['id']}/recall", headers=auth())
    assert resp.status == 200, await resp.text()
    near = at(10)
    body = {"lat": near[0], "lng": near[1], "datum": "wgs84", "accuracy_m": 10}
    resp = await client.post(f"/v1/meetings/{data['id']}/checkins", json=body, headers=auth(org.m1a_member))
    assert (await problem(resp, 409))["type"].endswith("meeting-recalled")
    assert await db.fetchval("SELECT count(*) FROM meeting_checkins") == 0
