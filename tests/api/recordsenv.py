"""A meeting to record: a notice of kind meeting with its meeting row, fanned out to its audience.

``make_meeting`` stores the meeting the way the meetings endpoint does (a notice through the one
creation path, then its ``meetings`` row) and waits for the fan-out, so recipients exist.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.domain import geo
from tests.conftest import wait_until
from tests.helpers import get, post

VENUE = (39.9087, 116.3975)  # WGS-84


def near(metres: float, datum: geo.Datum = "wgs84", accuracy: float = 20) -> dict[str, Any]:
    """A device position ``metres`` north-east of the venue, reported in ``datum``."""
    lat, lng = geo.destination(*VENUE, 45, metres)
    lat, lng = geo.to_datum(lat, lng, "wgs84", datum)
    return {"lat": f"{lat:.7f}", "lng": f"{lng:.7f}", "datum": datum, "accuracy_m": str(accuracy)}


async def make_meeting(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    *,
    unit: str,
    token: str | None = None,
    kind: str = "group_meeting",
    starts: timedelta = timedelta(minutes=-10),
    hours: float = 1,
    at: datetime | None = None,
) -> str:
    """A meeting held by ``unit`` for its members, starting ``starts`` from the engine clock (or
    ``at``); created with ``token`` (admin by default)."""
    body = {"kind": "notice", "title": "党小组会", "body": "Meeting", "audience": {"units": [unit]}}
    notice = await post(client, "/v1/notices", body, token=token, status=202)
    notice_id = str(notice["id"])
    now: datetime = await db.fetchval("SELECT notifier_now()")
    start = at or now + starts
    await db.execute("UPDATE notices SET kind = 'meeting' WHERE id = $1", notice_id)
    await db.execute(
        """INSERT INTO meetings (notice_id, type, unit_id, scope_unit_id, starts_at, ends_at, venue_lat,
               venue_lng, venue_datum, checkin_opens_at, checkin_closes_at)
           SELECT id, $2, $3, scope_unit_id, $4::timestamptz, $5::timestamptz, $6, $7, 'wgs84',
                  $4::timestamptz - interval '30 minutes', $5::timestamptz
           FROM notices WHERE id = $1""",
        notice_id,
        kind,
        unit,
        start,
        start + timedelta(hours=hours),
        *VENUE,
    )

    async def fanned_out() -> bool:
        n = await get(client, f"/v1/notices/{notice_id}")
        return bool(n["state"] == "active")

    await wait_until(fanned_out, within=20)
    return notice_id


async def check_in(db: asyncpg.Connection, notice_id: str, member_id: str, *, late: bool = False) -> None:
    """An accepted check-in (at the start, or 20 minutes after it)."""
    await db.execute(
        """INSERT INTO meeting_checkins
               (notice_id, member_id, at, lat, lng, datum, accuracy_m, distance_m, verdict)
           SELECT notice_id, $2, starts_at + CASE WHEN $3 THEN interval '20 minutes' ELSE interval '0' END,
                  venue_lat, venue_lng, 'wgs84', 10, 0, 'ok' FROM meetings WHERE notice_id = $1""",
        notice_id,
        member_id,
        late,
    )
