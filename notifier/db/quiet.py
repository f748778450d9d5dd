"""Quiet hours: whether a member is inside theirs now (engine clock, member's local time), and
when they end.

The rule, which never depends on the order of unit ids: a member's own quiet hours and time zone
win. What the member leaves unset comes from each of their units -- the nearest unit up the
tree from that membership that sets it; the time zone finally Asia/Shanghai. A member in several
units is quiet while inside the quiet hours of any of them (the union: the most restrictive),
until the last of those that hold them now ends.
"""

from __future__ import annotations

from notifier.db.pool import Connection

DEFAULT_TIMEZONE = "Asia/Shanghai"

QUIET_UNTIL = f"""
WITH RECURSIVE m AS (
    SELECT id AS member_id, timezone, quiet_start, quiet_end FROM members WHERE id = ANY($1::text[])
),
-- One path per membership (a member with no unit: one path, their own settings only).
paths AS (
    SELECT m.member_id, mu.unit_id FROM m LEFT JOIN member_units mu ON mu.member_id = m.member_id
),
up AS (
    SELECT p.member_id, p.unit_id AS start_id, u.parent_id, u.timezone, u.quiet_start, u.quiet_end, 0 AS depth
    FROM paths p JOIN units u ON u.id = p.unit_id
    UNION ALL
    SELECT up.member_id, up.start_id, u.parent_id, u.timezone, u.quiet_start, u.quiet_end, up.depth + 1
    FROM up JOIN units u ON u.id = up.parent_id WHERE up.depth < 1000
),
inherited AS (
    SELECT member_id, start_id,
           (array_agg(timezone ORDER BY depth) FILTER (WHERE timezone IS NOT NULL))[1] AS tz,
           (array_agg(quiet_start ORDER BY depth) FILTER (WHERE quiet_start IS NOT NULL))[1] AS qs,
           (array_agg(quiet_end ORDER BY depth) FILTER (WHERE quiet_start IS NOT NULL))[1] AS qe
    FROM up GROUP BY member_id, start_id
),
eff AS (
    SELECT p.member_id, coalesce(m.timezone, i.tz, '{DEFAULT_TIMEZONE}') AS tz,
           CASE WHEN m.quiet_start IS NOT NULL THEN m.quiet_start ELSE i.qs END AS qs,
           CASE WHEN m.quiet_start IS NOT NULL THEN m.quiet_end ELSE i.qe END AS qe
    FROM paths p JOIN m ON m.member_id = p.member_id
    LEFT JOIN inherited i ON i.member_id = p.member_id AND i.start_id = p.unit_id
),
loc AS (
    SELECT member_id, tz, qs, qe, (SELECT notifier_now()) AT TIME ZONE tz AS local FROM eff WHERE qs IS NOT NULL
)
SELECT member_id,
       max(extract(epoch FROM ((local::date + qe
           + CASE WHEN local::time < qe THEN interval '0' ELSE interval '1 day' END) AT TIME ZONE tz)
           - (SELECT notifier_now()))) AS ends_in
FROM loc
WHERE CASE WHEN qs < qe THEN local::time >= qs AND local::time < qe
           ELSE local::time >= qs OR local::time < qe END
GROUP BY member_id"""


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
