"""Unit types, meeting requirements per unit type, and the quarter's supervision report.

The report is three set-based statements over one subtree walk each, whatever the size of the
tree: the units below the reporting unit with their requirements, the meetings they held in the
quarter (with attendance figures per meeting), and nothing per unit. domain/supervision.py turns
the rows into periods, shortfalls and rates.
"""

from __future__ import annotations

from datetime import datetime

from notifier.db.pool import Connection, Record
from notifier.db.units import subtree

SET_UNIT_TYPE = "UPDATE units SET unit_type = $2, updated_at = (SELECT notifier_now()) WHERE id = $1"
GET_UNIT_TYPE = "SELECT unit_type FROM units WHERE id = $1"

REQUIREMENTS = """
SELECT r.unit_type, r.meeting_type, r.every, r.times FROM meeting_requirements r
ORDER BY r.unit_type, r.meeting_type"""
DROP_REQUIREMENTS = "DELETE FROM meeting_requirements"
ADD_REQUIREMENTS = """
INSERT INTO meeting_requirements (unit_type, meeting_type, every, times)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])"""
MEETING_TYPES = "SELECT code FROM meeting_types WHERE code = ANY($1::text[])"

# $1 the reporting unit (in an array)  $2 its time zone (a unit's first local day: ``since``)
REPORT_UNITS = (
    "WITH RECURSIVE "
    + subtree("$1")
    + """
SELECT u.id, u.name, u.parent_id, u.unit_type, sub.depth, (u.created_at AT TIME ZONE $2)::date AS since,
       coalesce(array_agg(r.meeting_type ORDER BY r.meeting_type) FILTER (WHERE r.meeting_type IS NOT NULL),
                '{}') AS req_types,
       coalesce(array_agg(r.every ORDER BY r.meeting_type) FILTER (WHERE r.meeting_type IS NOT NULL),
                '{}') AS req_every,
       coalesce(array_agg(r.times ORDER BY r.meeting_type) FILTER (WHERE r.meeting_type IS NOT NULL),
                '{}') AS req_times
FROM sub JOIN units u ON u.id = sub.id
LEFT JOIN meeting_requirements r ON r.unit_type = u.unit_type
GROUP BY u.id, u.name, u.parent_id, u.unit_type, sub.depth, u.created_at
ORDER BY sub.depth, u.id"""
)

# The meetings held by units of the subtree whose start falls in [$2, $3), each with its local
# start day in $4 and whether it counts as held; attendance counts only held meetings.
#   expected: recipients; present: recipients with an accepted check-in; excused: recipients on
#   leave who did not check in.
REPORT_MEETINGS = (
    "WITH RECURSIVE "
    + subtree("$1")
    + """,
mt AS (
    SELECT m.notice_id, m.type, m.unit_id, m.starts_at, m.ends_at
    FROM meetings m JOIN sub ON sub.id = m.unit_id JOIN notices n ON n.id = m.notice_id
    WHERE m.starts_at >= $2 AND m.starts_at < $3 AND n.recalled_at IS NULL
)
SELECT mt.notice_id, mt.type, mt.unit_id, mt.starts_at, (mt.starts_at AT TIME ZONE $4)::date AS day,
       mt.ends_at <= (SELECT notifier_now()) AND (
           EXISTS (SELECT 1 FROM meeting_presences k WHERE k.notice_id = mt.notice_id)
           OR EXISTS (SELECT 1 FROM meeting_records x WHERE x.notice_id = mt.notice_id)
           OR EXISTS (SELECT 1 FROM meeting_photos p WHERE p.notice_id = mt.notice_id)
       ) AS held,
       a.expected, a.present, a.excused
FROM mt
CROSS JOIN LATERAL (
    SELECT count(*) AS expected,
           count(*) FILTER (WHERE ok.member_id IS NOT NULL) AS present,
           count(*) FILTER (WHERE ok.member_id IS NULL AND ab.member_id IS NOT NULL) AS excused
    FROM recipients r
    LEFT JOIN LATERAL (
        SELECT k.member_id FROM meeting_presences k
        WHERE k.notice_id = r.notice_id AND k.member_id = r.member_id LIMIT 1
    ) ok ON true
    LEFT JOIN meeting_absences ab ON ab.notice_id = r.notice_id AND ab.member_id = r.member_id
    WHERE r.notice_id = mt.notice_id
) a
ORDER BY mt.unit_id, mt.starts_at"""
)


async def set_unit_type(conn: Connection, unit_id: str, unit_type: str | None) -> None:
    await conn.execute(SET_UNIT_TYPE, unit_id, unit_type)


async def get_unit_type(conn: Connection, unit_id: str) -> str | None:
    value = await conn.fetchval(GET_UNIT_TYPE, unit_id)
    return None if value is None else str(value)


async def requirements(conn: Connection) -> list[Record]:
    return list(await conn.fetch(REQUIREMENTS))


async def known_meeting_types(conn: Connection, codes: list[str]) -> set[str]:
    return {r["code"] for r in await conn.fetch(MEETING_TYPES, codes)}


async def replace_requirements(conn: Connection, rows: list[tuple[str, str, str, int]]) -> None:
    await conn.execute(DROP_REQUIREMENTS)
    if rows:
        cols = list(zip(*rows, strict=True))
        await conn.execute(ADD_REQUIREMENTS, list(cols[0]), list(cols[1]), list(cols[2]), list(cols[3]))


async def report_units(conn: Connection, unit_id: str, timezone: str) -> list[Record]:
    return list(await conn.fetch(REPORT_UNITS, [unit_id], timezone))


async def report_meetings(
    conn: Connection, unit_id: str, start: datetime, end: datetime, timezone: str
) -> list[Record]:
    return list(await conn.fetch(REPORT_MEETINGS, [unit_id], start, end, timezone))
