"""point_rules, point_awards, notice_views: study points.

``award`` is the one way points are earned. It finds the rule ``code`` of the member's
organisation (the root unit above their units; a member of two organisations that both have the
rule earns under the first by id), and writes one ledger row per (member, code, source) -- a
unique key, so a replayed receipt earns nothing. The day's points of a rule are capped per
member per local day (the member's time zone, else their units', else Asia/Shanghai: the
``quiet.member_settings_cte`` rule that the member's pages use); an award that would pass the cap
earns what is left of it, and once the cap is reached the row is written with 0 points (the
action is done: repeating it tomorrow earns nothing either).

A rule with ``min_dwell_seconds`` earns for a ``notice:<id>`` source only once the member has had
the notice open that long by the server's clock (``notice_views``; a view still open counts up
to now, and a page's own ``visible_seconds`` can only shorten it). Too short: no row is written,
so a later close that reaches the dwell earns the point then.

Concurrency: the first statement takes a transaction advisory lock per (member, code), only for
members whose organisation has the rule; the second reads the day's total after that lock (a new
snapshot), so two concurrent awards cannot both pass the cap. An organisation without the rule
costs the one first statement and takes no lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.db.pool import Connection
from notifier.db.quiet import member_settings_cte

# The members' rule `code` ($2) and time zone, locked per (member, code) in member order.
RULES = (
    member_settings_cte("$1")
    + """,
zone AS (
    SELECT DISTINCT ON (member_id) member_id, tz FROM eff GROUP BY member_id, tz
    ORDER BY member_id, count(*) DESC, tz
),
rule AS (
    SELECT DISTINCT ON (up.path[1]) up.path[1] AS member_id, r.root_unit_id, r.points, r.daily_cap,
           r.min_dwell_seconds
    FROM up JOIN point_rules r ON r.root_unit_id = up.id AND r.code = $2
    WHERE up.parent_id IS NULL
    ORDER BY up.path[1], r.root_unit_id
)
SELECT rule.member_id, rule.root_unit_id, rule.points, rule.daily_cap, rule.min_dwell_seconds, zone.tz,
       pg_advisory_xact_lock(hashtextextended('points:' || rule.member_id || ':' || $2::text, 0)) AS locked
FROM rule JOIN zone ON zone.member_id = rule.member_id
WHERE EXISTS (SELECT 1 FROM point_rules WHERE code = $2)
ORDER BY rule.member_id"""
)

# The dwell of a member on a notice: their longest view, by the server's clock up to $at, never
# longer than the page said it was visible.
DWELL = """(
    SELECT max(least(s.span, coalesce(s.visible_seconds, s.span))) FROM (
        SELECT extract(epoch FROM least(coalesce(v.closed_at, t.at), t.at) - v.opened_at)::float8 AS span,
               v.visible_seconds
        FROM notice_views v
        WHERE v.member_id = {c}.member_id AND v.opened_at <= t.at
          AND v.notice_id = CASE WHEN {c}.source ~ '^notice:[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}$'
                                 THEN substr({c}.source, 8)::uuid END
    ) s
)"""

# Award code $1 at $2 (NULL: now) for the items $3.. (one per member and source, with the rule
# found by RULES); the day's earlier points counted after the lock, the batch's own in order.
AWARD = f"""
WITH t AS (SELECT coalesce($2::timestamptz, (SELECT notifier_now())) AS at),
c AS (
    SELECT c.*, (t.at AT TIME ZONE c.tz)::date AS day
    FROM t, unnest($3::text[], $4::text[], $5::text[], $6::int[], $7::int[], $8::int[], $9::text[])
         WITH ORDINALITY AS c (member_id, source, root_unit_id, points, daily_cap, min_dwell, tz, ord)
),
fresh AS (
    SELECT DISTINCT ON (c.member_id, c.source) c.* FROM c, t
    WHERE NOT EXISTS (SELECT 1 FROM point_awards a
                      WHERE a.member_id = c.member_id AND a.code = $1 AND a.source = c.source)
      AND (c.min_dwell = 0 OR coalesce({DWELL.format(c="c")}, 0) >= c.min_dwell)
    ORDER BY c.member_id, c.source, c.ord
),
earlier AS (
    SELECT a.member_id, a.day, sum(a.points) AS points FROM point_awards a
    JOIN (SELECT DISTINCT member_id, day FROM fresh) f ON f.member_id = a.member_id AND f.day = a.day
    WHERE a.code = $1 GROUP BY a.member_id, a.day
),
ranked AS (
    SELECT f.*, coalesce(e.points, 0)
                + sum(f.points) OVER (PARTITION BY f.member_id, f.day ORDER BY f.ord ROWS UNBOUNDED PRECEDING)
                - f.points AS before
    FROM fresh f LEFT JOIN earlier e ON e.member_id = f.member_id AND e.day = f.day
),
ins AS (
    INSERT INTO point_awards (member_id, code, source, root_unit_id, points, day, awarded_at)
    SELECT r.member_id, $1, r.source, r.root_unit_id,
           CASE WHEN r.daily_cap IS NULL THEN r.points ELSE greatest(0, least(r.points, r.daily_cap - r.before)) END,
           r.day, t.at
    FROM ranked r, t ORDER BY r.ord
    ON CONFLICT (member_id, code, source) DO NOTHING
    RETURNING member_id, source, points
)
SELECT member_id, source, points FROM ins"""


async def award(
    conn: Connection, member_id: str, code: str, source: str, *, at: datetime | None = None
) -> int:
    """Award the member's organisation's rule ``code`` once for ``source``; the points actually
    awarded (0: no such rule, cap reached, already awarded, or dwell not met). Call it inside the
    transaction that records the action."""
    got = await award_many(conn, [member_id], code, [source], at=at)
    return sum(got.values())


async def award_many(
    conn: Connection, member_ids: list[str], code: str, sources: list[str], *, at: datetime | None = None
) -> dict[tuple[str, str], int]:
    """``award`` for many (member, source) pairs in two statements; {(member, source): points}
    for the pairs that earned a ledger row (a row of 0 points: the cap was reached)."""
    if not member_ids:
        return {}
    rules = {r["member_id"]: r for r in await conn.fetch(RULES, sorted(set(member_ids)), code)}
    if not rules:
        return {}
    items = [(m, s) for m, s in zip(member_ids, sources, strict=True) if m in rules]
    cols: list[list[Any]] = [[] for _ in range(7)]
    for m, s in items:
        r = rules[m]
        for col, value in zip(
            cols,
            (m, s, r["root_unit_id"], r["points"], r["daily_cap"], r["min_dwell_seconds"], r["tz"]),
            strict=True,
        ):
            col.append(value)
    rows = await conn.fetch(AWARD, code, at, *cols)
    return {(r["member_id"], r["source"]): int(r["points"]) for r in rows}


# The lesson notices among these (notice, member) pairs: the ones a read earns `lesson_read` for.
LESSONS = "SELECT id FROM notices WHERE id = ANY($1::uuid[]) AND kind = 'lesson'"


async def award_lesson_reads(conn: Connection, notice_ids: list[str], member_ids: list[str]) -> int:
    """``lesson_read`` for the reads of these pairs that are of lesson notices (the receipt paths
    call it in the transaction that recorded the reads); the points awarded."""
    if not notice_ids:
        return 0
    lessons = {str(r["id"]) for r in await conn.fetch(LESSONS, sorted(set(notice_ids)))}
    pairs = [(m, f"notice:{n}") for n, m in zip(notice_ids, member_ids, strict=True) if n in lessons]
    if not pairs:
        return 0
    got = await award_many(conn, [m for m, _ in pairs], "lesson_read", [s for _, s in pairs])
    return sum(got.values())
