"""Quiet hours: whether a member is inside theirs now (engine clock, member's local time), and
when they end. The member's own hours win, else the nearest unit up the tree that sets them;
the time zone likewise, finally Asia/Shanghai."""

from __future__ import annotations

from notifier.db.pool import Connection
from notifier.db.units import ancestors

DEFAULT_TIMEZONE = "Asia/Shanghai"

QUIET_UNTIL = f"""
WITH RECURSIVE m AS (
    SELECT mem.id AS member_id, mem.timezone, mem.quiet_start, mem.quiet_end,
           (SELECT min(unit_id) FROM member_units WHERE member_id = mem.id) AS unit_id
    FROM members mem WHERE mem.id = ANY($1::text[])
),
{ancestors("SELECT member_id, unit_id FROM m", "member_id")},
inherited AS (
    SELECT up.member_id,
           (array_agg(u.timezone ORDER BY up.depth) FILTER (WHERE u.timezone IS NOT NULL))[1] AS tz,
           (array_agg(u.quiet_start ORDER BY up.depth) FILTER (WHERE u.quiet_start IS NOT NULL))[1] AS qs,
           (array_agg(u.quiet_end ORDER BY up.depth) FILTER (WHERE u.quiet_start IS NOT NULL))[1] AS qe
    FROM up JOIN units u ON u.id = up.id GROUP BY up.member_id
),
eff AS (
    SELECT m.member_id, coalesce(m.timezone, i.tz, '{DEFAULT_TIMEZONE}') AS tz,
           CASE WHEN m.quiet_start IS NOT NULL THEN m.quiet_start ELSE i.qs END AS qs,
           CASE WHEN m.quiet_start IS NOT NULL THEN m.quiet_end ELSE i.qe END AS qe
    FROM m LEFT JOIN inherited i USING (member_id)
),
loc AS (
    SELECT member_id, tz, qs, qe, (SELECT notifier_now()) AT TIME ZONE tz AS local FROM eff WHERE qs IS NOT NULL
)
SELECT member_id,
       extract(epoch FROM ((local::date + qe
           + CASE WHEN local::time < qe THEN interval '0' ELSE interval '1 day' END) AT TIME ZONE tz)
           - (SELECT notifier_now())) AS ends_in
FROM loc
WHERE CASE WHEN qs < qe THEN local::time >= qs AND local::time < qe
           ELSE local::time >= qs OR local::time < qe END"""


# Cheap (partial indexes): does anyone have quiet hours at all?
ANY_QUIET_HOURS = """
SELECT EXISTS (SELECT 1 FROM units WHERE quiet_start IS NOT NULL)
    OR EXISTS (SELECT 1 FROM members WHERE quiet_start IS NOT NULL)"""


async def quiet_now(conn: Connection, member_ids: list[str]) -> dict[str, float]:
    """{member_id: seconds until their quiet hours end} for the members inside them now."""
    if not member_ids or not await conn.fetchval(ANY_QUIET_HOURS):
        return {}
    rows = await conn.fetch(QUIET_UNTIL, member_ids)
    return {r["member_id"]: float(r["ends_in"]) for r in rows}
