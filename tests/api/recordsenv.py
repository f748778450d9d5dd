"""A meeting to record, created by POST /v1/meetings and fanned out (so recipients exist), and
accepted check-ins at any time of it (``check_in``: for meetings whose window the test does not
live through; the check-in endpoint itself is used where it can be).
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
    window: timedelta | None = None,
    photo_required: bool = False,
) -> str:
    """A meeting held by ``unit`` for its subtree (POST /v1/meetings), starting ``starts`` from the
    engine clock (or ``at``); created with ``token`` (admin by default); ``window``: check-ins
    close that long after the start (default: the API's); ``photo_required`` as the API takes it.
    Returns once it has fanned out."""
    now: datetime = await db.fetchval("SELECT notifier_now()")
    start = at or now + starts
    body: dict[str, Any] = {
        "type": kind,
        "title": "党小组会",
        "unit_id": unit,
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=hours)).isoformat(),
        "venue": {"lat": VENUE[0], "lng": VENUE[1], "datum": "wgs84"},
        "photo_required": photo_required,
    }
    if window is not None:
        body["checkin_closes_at"] = (start + window).isoformat()
    meeting = await post(client, "/v1/meetings", body, token=token)
    notice_id = str(meeting["id"])

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
