"""meeting_records, meeting_photos, meeting_absences: a meeting's archive and its attendance.

The venue and day an upload is judged against (``venue``), the minutes (one row per meeting,
replaced), the photos (bytea, once per meeting and SHA-256), and the attendance list: every
recipient of the meeting notice, present when they have an accepted check-in (with its photo when
the meeting requires one: the view ``meeting_presences``), late when that check-in came after the start, excused when a leave (请假) is recorded and they did not come.
"""

from __future__ import annotations

from datetime import datetime

from notifier.db.lessons import effective_cte
from notifier.db.pool import Connection, Record

MAX_PHOTOS = 50  # per meeting
MAX_ATTENDANCE = 5000  # rows on one attendance list

# The meeting as an upload is judged against it, with the server's clock and the time zone of
# the unit holding it (its own or inherited).
VENUE = (
    effective_cte("SELECT m.unit_id FROM meetings m WHERE m.notice_id = $1")
    + """
SELECT m.notice_id, m.unit_id, m.type, m.starts_at, m.ends_at, m.venue_lat, m.venue_lng, m.venue_datum, m.radius_m,
       m.max_accuracy_m, coalesce((SELECT tz FROM eff LIMIT 1), 'Asia/Shanghai') AS timezone,
       (SELECT notifier_now()) AS now
FROM meetings m WHERE m.notice_id = $1"""
)

LOCK_MEETING = "SELECT 1 FROM meetings WHERE notice_id = $1 FOR UPDATE"

PUT_MINUTES = """
INSERT INTO meeting_records (notice_id, minutes, lat, lng, datum, accuracy_m, distance_m, recorded_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (notice_id) DO UPDATE SET minutes = excluded.minutes, lat = excluded.lat, lng = excluded.lng,
    datum = excluded.datum, accuracy_m = excluded.accuracy_m, distance_m = excluded.distance_m,
    recorded_by = excluded.recorded_by, updated_at = (SELECT notifier_now())
RETURNING (xmax = 0) AS created"""

GET_MINUTES = "SELECT minutes, distance_m, created_at, updated_at FROM meeting_records WHERE notice_id = $1"

PHOTO_COLUMNS = "id, sha256, content_type, size, distance_m, uploaded_at"
# The record's photos are the 'site' ones; 'checkin' photos are members' (api/checkin_photos.py).
COUNT_PHOTOS = "SELECT count(*) FROM meeting_photos WHERE notice_id = $1 AND kind = 'site'"
# Deduplicated by content: the same bytes again answer the photo already stored (of either kind).
ADD_PHOTO = f"""
WITH ins AS (
    INSERT INTO meeting_photos (notice_id, sha256, content_type, size, data, lat, lng, datum, accuracy_m,
                                distance_m, uploaded_by, kind)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (notice_id, sha256) DO NOTHING
    RETURNING {PHOTO_COLUMNS}, kind
)
SELECT {PHOTO_COLUMNS}, kind, true AS created FROM ins
UNION ALL
SELECT {PHOTO_COLUMNS}, kind, false FROM meeting_photos
WHERE notice_id = $1 AND sha256 = $2 AND NOT EXISTS (SELECT 1 FROM ins)"""
# Uploads of the same bytes to one meeting, one at a time: the second sees the first committed (and
# ADD_PHOTO's fallback SELECT finds it) instead of a row its snapshot cannot see.
LOCK_PHOTO_BYTES = (
    "SELECT pg_advisory_xact_lock(hashtextextended($1::text || ':' || encode($2::bytea, 'hex'), 5173))"
)
LIST_PHOTOS = f"SELECT {PHOTO_COLUMNS} FROM meeting_photos WHERE notice_id = $1 AND kind = 'site' ORDER BY uploaded_at, id"
GET_PHOTO = (
    "SELECT content_type, sha256, data FROM meeting_photos WHERE notice_id = $1 AND id = $2 AND kind = $3"
)

# $1 meeting  $2 only recipients counted in this unit's subtree (NULL: all)
ATTENDANCE = f"""
SELECT r.member_id, mb.name, c.first_ok, c.attempts, a.reason, a.by_member, a.recorded_at,
       c.first_ok IS NOT NULL AND c.first_ok > mt.starts_at AS late
FROM recipients r
JOIN members mb ON mb.id = r.member_id
JOIN meetings mt ON mt.notice_id = r.notice_id
LEFT JOIN LATERAL (
    SELECT (SELECT min(x.at) FROM meeting_presences x WHERE x.notice_id = r.notice_id AND x.member_id = r.member_id)
               AS first_ok,
           count(*) AS attempts
    FROM meeting_checkins k WHERE k.notice_id = r.notice_id AND k.member_id = r.member_id
) c ON true
LEFT JOIN meeting_absences a ON a.notice_id = r.notice_id AND a.member_id = r.member_id
WHERE r.notice_id = $1 AND ($2::text IS NULL OR $2 = ANY (r.units))
ORDER BY mb.name, r.member_id
LIMIT {MAX_ATTENDANCE}"""

# $1 meeting  $2 member  $3 only when counted in this unit's subtree (NULL: any recipient)
IS_RECIPIENT = """
SELECT EXISTS (SELECT 1 FROM recipients r WHERE r.notice_id = $1 AND r.member_id = $2
               AND ($3::text IS NULL OR $3 = ANY (r.units)))"""
PUT_ABSENCE = """
INSERT INTO meeting_absences (notice_id, member_id, reason, by_member, recorded_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (notice_id, member_id) DO UPDATE SET reason = excluded.reason, by_member = excluded.by_member,
    recorded_by = excluded.recorded_by, recorded_at = (SELECT notifier_now())
RETURNING reason, by_member, recorded_at, (xmax = 0) AS created"""
DELETE_ABSENCE = "DELETE FROM meeting_absences WHERE notice_id = $1 AND member_id = $2"


async def venue(conn: Connection, notice_id: str) -> Record | None:
    return await conn.fetchrow(VENUE, notice_id)


async def lock_meeting(conn: Connection, notice_id: str) -> None:
    """Serialises uploads to one meeting (the photo cap holds under concurrency)."""
    await conn.execute(LOCK_MEETING, notice_id)


async def put_minutes(
    conn: Connection,
    notice_id: str,
    minutes: str,
    device: tuple[float, float, str, float],
    distance_m: float,
    by: str | None,
) -> bool:
    """Store or replace the minutes; True when they were new."""
    return bool(await conn.fetchval(PUT_MINUTES, notice_id, minutes, *device, distance_m, by))


async def get_minutes(conn: Connection, notice_id: str) -> Record | None:
    return await conn.fetchrow(GET_MINUTES, notice_id)


async def count_photos(conn: Connection, notice_id: str) -> int:
    return int(await conn.fetchval(COUNT_PHOTOS, notice_id))


async def add_photo(
    conn: Connection,
    notice_id: str,
    sha256: bytes,
    content_type: str,
    data: bytes,
    device: tuple[float, float, str, float],
    distance_m: float,
    by: str | None,
    kind: str = "site",
) -> Record:
    """The stored photo (``created`` false: these bytes were stored for this meeting already, as
    the row's ``kind`` says)."""
    row = await conn.fetchrow(
        ADD_PHOTO, notice_id, sha256, content_type, len(data), data, *device, distance_m, by, kind
    )
    assert row is not None
    return row


async def lock_photo_bytes(conn: Connection, notice_id: str, sha256: bytes) -> None:
    await conn.execute(LOCK_PHOTO_BYTES, notice_id, sha256)


async def list_photos(conn: Connection, notice_id: str) -> list[Record]:
    return list(await conn.fetch(LIST_PHOTOS, notice_id))


async def get_photo(conn: Connection, notice_id: str, photo_id: str, kind: str = "site") -> Record | None:
    return await conn.fetchrow(GET_PHOTO, notice_id, photo_id, kind)


async def attendance(conn: Connection, notice_id: str, unit_id: str | None) -> list[Record]:
    return list(await conn.fetch(ATTENDANCE, notice_id, unit_id))


async def is_recipient(conn: Connection, notice_id: str, member_id: str, unit_id: str | None) -> bool:
    return bool(await conn.fetchval(IS_RECIPIENT, notice_id, member_id, unit_id))


async def put_absence(
    conn: Connection, notice_id: str, member_id: str, reason: str, by_member: bool, by: str | None
) -> Record:
    row = await conn.fetchrow(PUT_ABSENCE, notice_id, member_id, reason, by_member, by)
    assert row is not None
    return row


async def delete_absence(conn: Connection, notice_id: str, member_id: str) -> bool:
    return bool(await conn.execute(DELETE_ABSENCE, notice_id, member_id) != "DELETE 0")


def as_photo(notice_id: str, row: Record) -> dict[str, object]:
    return {
        "id": str(row["id"]),
        "sha256": bytes(row["sha256"]).hex(),
        "content_type": row["content_type"],
        "size": row["size"],
        "distance_m": round(float(row["distance_m"]), 1),
        "uploaded_at": row["uploaded_at"].isoformat(),
        "url": f"/v1/meetings/{notice_id}/record/photos/{row['id']}",
    }


def when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
