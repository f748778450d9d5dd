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
from notifier.db.units import ancestors

DEFAULT_TIMEZONE = "Asia/Shanghai"


def member_settings_cte(members: str) -> str:
    """``WITH RECURSIVE`` ending in ``eff(member_id, tz, qs, qe)``: one row per membership of
    the members the ``text[]`` parameter ``members`` lists (one row for a member with no unit),
    with the member's own settings winning over the nearest unit's (the rule above)."""
    return f"""
WITH RECURSIVE m AS (
    SELECT id AS member_id, timezone, quiet_start, quiet_end FROM members WHERE id = ANY({members}::text[])
),
-- One path per membership (a member with no unit: one path, their own settings only).
paths AS (
    SELECT m.member_id, mu.unit_id FROM m LEFT JOIN member_units mu ON mu.member_id = m.member_id
),
{ancestors("SELECT ARRAY[member_id, unit_id], unit_id FROM paths WHERE unit_id IS NOT NULL", "path")},
inherited AS (
    SELECT up.path[1] AS member_id, up.path[2] AS start_id,
           (array_agg(u.timezone ORDER BY up.depth) FILTER (WHERE u.timezone IS NOT NULL))[1] AS tz,
           (array_agg(u.quiet_start ORDER BY up.depth) FILTER (WHERE u.quiet_start IS NOT NULL))[1] AS qs,
           (array_agg(u.quiet_end ORDER BY up.depth) FILTER (WHERE u.quiet_start IS NOT NULL))[1] AS qe
    FROM up JOIN units u ON u.id = up.id GROUP BY up.path
),
eff AS (
    SELECT p.member_id, coalesce(m.timezone, i.tz, '{DEFAULT_TIMEZONE}') AS tz,
           CASE WHEN m.quiet_start IS NOT NULL THEN m.quiet_start ELSE i.qs END AS qs,
           CASE WHEN m.quiet_start IS NOT NULL THEN m.quiet_end ELSE i.qe END AS qe
    FROM paths p JOIN m ON m.member_id = p.member_id
    LEFT JOIN inherited i ON i.member_id = p.member_id AND i.start_id = p.unit_id
)"""


QUIET_UNTIL = (
    member_settings_cte("$1")
    + """,
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
)

# The one time zone a member's pages show: their own, else their units' (the one most of their
# memberships inherit; a tie goes to the first by name, so the order of unit ids never matters).
MEMBER_TIMEZONE = (
    member_settings_cte("ARRAY[$1::text]")
    + " SELECT tz FROM eff GROUP BY tz ORDER BY count(*) DESC, tz LIMIT 1"
)


# Cheap (partial indexes): does anyone have quiet hours at all?
ANY_QUIET_HOURS = """
SELECT EXISTS (SELECT 1 FROM units WHERE quiet_start IS NOT NULL)
    OR EXISTS (SELECT 1 FROM members WHERE quiet_start IS NOT NULL)"""


async def member_timezone(conn: Connection, member_id: str) -> str:
    return str(await conn.fetchval(MEMBER_TIMEZONE, member_id) or DEFAULT_TIMEZONE)


async def quiet_now(conn: Connection, member_ids: list[str]) -> dict[str, float]:
    """{member_id: seconds until their quiet hours end} for the members inside them now."""
    if not member_ids or not await conn.fetchval(ANY_QUIET_HOURS):
        return {}
    rows = await conn.fetch(QUIET_UNTIL, member_ids)
    return {r["member_id"]: float(r["ends_in"]) for r in rows}
