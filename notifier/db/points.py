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

Cost and concurrency: two statements. The first is a gate -- is there any rule of this code at
all? -- that, when there is, takes a transaction advisory lock per (member, code); without one
(a deployment without points) the award costs that one index probe. The second finds each
member's rule and time zone, checks the dwell and writes the ledger rows; it starts after the
lock, so its snapshot holds every award committed before it and two concurrent awards cannot
both pass the cap.
"""

from __future__ import annotations

from datetime import date, datetime

from notifier.db.pool import Connection, Record
from notifier.db.quiet import DEFAULT_TIMEZONE, member_settings_cte
from notifier.db.units import ANCESTORS_CTE, ancestors, subtree


def _rules(members: str, code: str) -> str:
    """``WITH RECURSIVE`` ending in ``zone(member_id, tz)`` and ``rule(member_id, root_unit_id,
    points, daily_cap, min_dwell_seconds)``: the rule ``code`` of the organisation of each member
    the ``text[]`` parameter ``members`` lists, and the member's time zone."""
    return (
        member_settings_cte(members)
        + f""",
zone AS (
    SELECT DISTINCT ON (member_id) member_id, tz FROM eff GROUP BY member_id, tz
    ORDER BY member_id, count(*) DESC, tz
),
rule AS (
    SELECT DISTINCT ON (up.path[1]) up.path[1] AS member_id, r.root_unit_id, r.points, r.daily_cap,
           r.min_dwell_seconds
    FROM up JOIN point_rules r ON r.root_unit_id = up.id AND r.code = {code}
    WHERE up.parent_id IS NULL
    ORDER BY up.path[1], r.root_unit_id
)"""
    )


MEMBER_RULE = (
    _rules("$1", "$2")
    + """
SELECT rule.member_id, rule.root_unit_id, rule.points, rule.daily_cap, rule.min_dwell_seconds, zone.tz
FROM rule JOIN zone ON zone.member_id = rule.member_id"""
)

# The gate, and the lock: when any organisation has a rule of code $2, a transaction advisory
# lock per (member, code) for the members $1, taken in member order; true when taken. Without
# such a rule it is one index probe and the award ends here.
GATE = """
SELECT count(*) > 0 FROM (
    SELECT pg_advisory_xact_lock(hashtextextended('points:' || m || ':' || $2::text, 0))
    FROM (SELECT DISTINCT m FROM unnest($1::text[]) AS m ORDER BY m) ms
    WHERE EXISTS (SELECT 1 FROM point_rules WHERE code = $2)
) l"""

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

# Award code $2 at $4 (NULL: now) for the members $1 and sources $3 (pairwise), under each
# member's organisation's rule; run after GATE's lock, so its snapshot holds every award committed
# before: the day's earlier points count against the cap, and the call's own in order.
AWARD = (
    _rules("$1", "$2")
    + f""",
t AS (SELECT coalesce($4::timestamptz, (SELECT notifier_now())) AS at),
c AS (
    SELECT i.member_id, i.source, i.ord, rule.root_unit_id, rule.points, rule.daily_cap,
           rule.min_dwell_seconds AS min_dwell, (t.at AT TIME ZONE zone.tz)::date AS day
    FROM t, unnest($1::text[], $3::text[]) WITH ORDINALITY AS i (member_id, source, ord)
    JOIN rule ON rule.member_id = i.member_id JOIN zone ON zone.member_id = i.member_id
),
fresh AS (
    SELECT DISTINCT ON (c.member_id, c.source) c.* FROM c, t
    WHERE NOT EXISTS (SELECT 1 FROM point_awards a
                      WHERE a.member_id = c.member_id AND a.code = $2 AND a.source = c.source)
      AND (c.min_dwell = 0 OR coalesce({DWELL.format(c="c")}, 0) >= c.min_dwell)
    ORDER BY c.member_id, c.source, c.ord
),
earlier AS (
    SELECT a.member_id, a.day, sum(a.points) AS points FROM point_awards a
    JOIN (SELECT DISTINCT member_id, day FROM fresh) f ON f.member_id = a.member_id AND f.day = a.day
    WHERE a.code = $2 GROUP BY a.member_id, a.day
),
ranked AS (
    SELECT f.*, coalesce(e.points, 0)
                + sum(f.points) OVER (PARTITION BY f.member_id, f.day ORDER BY f.ord ROWS UNBOUNDED PRECEDING)
                - f.points AS before
    FROM fresh f LEFT JOIN earlier e ON e.member_id = f.member_id AND e.day = f.day
),
ins AS (
    INSERT INTO point_awards (member_id, code, source, root_unit_id, points, day, awarded_at)
    SELECT r.member_id, $2, r.source, r.root_unit_id,
           CASE WHEN r.daily_cap IS NULL THEN r.points ELSE greatest(0, least(r.points, r.daily_cap - r.before)) END,
           r.day, t.at
    FROM ranked r, t ORDER BY r.ord
    ON CONFLICT (member_id, code, source) DO NOTHING
    RETURNING member_id, source, points
)
SELECT member_id, source, points FROM ins"""
)


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
    """``award`` for many (member, source) pairs in two statements (one without any rule of the
    code); {(member, source): points} for the pairs that earned a ledger row (0 points: the cap
    was reached)."""
    if not member_ids or not await conn.fetchval(GATE, member_ids, code):
        return {}
    rows = await conn.fetch(AWARD, member_ids, code, sources, at)
    return {(r["member_id"], r["source"]): int(r["points"]) for r in rows}


# The lesson notices among these, when any organisation has a lesson_read rule (else none: no
# further statement).
LESSONS = """
SELECT id FROM notices WHERE id = ANY($1::uuid[]) AND kind = 'lesson'
  AND EXISTS (SELECT 1 FROM point_rules WHERE code = 'lesson_read')"""


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


async def member_rule(conn: Connection, member_id: str, code: str) -> Record | None:
    """The rule ``code`` a member earns under (no lock: for showing it)."""
    return await conn.fetchrow(MEMBER_RULE, [member_id], code)


EARNED = "SELECT points FROM point_awards WHERE member_id = $1 AND code = $2 AND source = $3"


async def earned(conn: Connection, member_id: str, code: str, source: str) -> int | None:
    """The points this source earned the member under ``code`` (None: no ledger row yet)."""
    value = await conn.fetchval(EARNED, member_id, code, source)
    return None if value is None else int(value)


# --- rules -----------------------------------------------------------------------------------

RULE_COLUMNS = "id, root_unit_id, code, name, points, daily_cap, min_dwell_seconds, created_at, updated_at"
LIST_RULES = f"""
SELECT {RULE_COLUMNS} FROM point_rules WHERE ($1::text IS NULL OR root_unit_id = $1) ORDER BY root_unit_id, code"""
GET_RULE = f"SELECT {RULE_COLUMNS} FROM point_rules WHERE id = $1"
INSERT_RULE = f"""
INSERT INTO point_rules (root_unit_id, code, name, points, daily_cap, min_dwell_seconds, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, (SELECT notifier_now()), (SELECT notifier_now()))
ON CONFLICT (root_unit_id, code) DO NOTHING
RETURNING {RULE_COLUMNS}"""
UPDATE_RULE = f"""
UPDATE point_rules SET name = $2, points = $3, daily_cap = $4, min_dwell_seconds = $5,
    updated_at = (SELECT notifier_now())
WHERE id = $1 RETURNING {RULE_COLUMNS}"""
DELETE_RULE = f"DELETE FROM point_rules WHERE id = $1 RETURNING {RULE_COLUMNS}"


async def list_rules(conn: Connection, root_unit_id: str | None) -> list[Record]:
    return list(await conn.fetch(LIST_RULES, root_unit_id))


async def get_rule(conn: Connection, rule_id: str) -> Record | None:
    return await conn.fetchrow(GET_RULE, rule_id)


async def insert_rule(
    conn: Connection, root_unit_id: str, code: str, name: str | None, pts: int, cap: int | None, dwell: int
) -> Record | None:
    """The new rule; None when the organisation already has one with this code."""
    return await conn.fetchrow(INSERT_RULE, root_unit_id, code, name, pts, cap, dwell)


async def update_rule(
    conn: Connection, rule_id: str, name: str | None, pts: int, cap: int | None, dwell: int
) -> Record | None:
    return await conn.fetchrow(UPDATE_RULE, rule_id, name, pts, cap, dwell)


async def delete_rule(conn: Connection, rule_id: str) -> Record | None:
    return await conn.fetchrow(DELETE_RULE, rule_id)


# A unit's organisation (the root above it) and effective time zone, by one walk up.
PLACE = (
    ANCESTORS_CTE
    + f"""
SELECT (SELECT id FROM up WHERE parent_id IS NULL ORDER BY depth DESC LIMIT 1) AS root,
       coalesce((SELECT u.timezone FROM up JOIN units u ON u.id = up.id
                 WHERE u.timezone IS NOT NULL ORDER BY up.depth LIMIT 1), '{DEFAULT_TIMEZONE}') AS tz"""
)


async def unit_place(conn: Connection, unit_id: str) -> tuple[str | None, str]:
    """(the organisation's root unit id -- None for an unknown unit, the unit's time zone)."""
    row = await conn.fetchrow(PLACE, unit_id)
    assert row is not None
    return row["root"], str(row["tz"])


# --- views -----------------------------------------------------------------------------------

VIEW_COLUMNS = """id, notice_id, member_id, opened_at, closed_at, visible_seconds,
    least(extract(epoch FROM coalesce(closed_at, (SELECT notifier_now())) - opened_at)::float8,
          coalesce(visible_seconds, 'infinity'::float8)) AS dwell_seconds"""
# At most MAX_VIEWS views of one notice per member: a page opens one each time it is shown.
MAX_VIEWS = 200
OPEN_VIEW = f"""
INSERT INTO notice_views (notice_id, member_id, opened_at)
SELECT $1, $2, (SELECT notifier_now())
WHERE (SELECT count(*) FROM notice_views WHERE member_id = $2 AND notice_id = $1) < {MAX_VIEWS}
RETURNING {VIEW_COLUMNS}"""
# A view still open takes the page's visible time (it can only shorten the dwell) and, with $5, closes.
UPDATE_VIEW = f"""
UPDATE notice_views SET visible_seconds = CASE WHEN closed_at IS NULL THEN coalesce($4, visible_seconds)
                                               ELSE visible_seconds END,
    closed_at = CASE WHEN closed_at IS NULL AND $5 THEN (SELECT notifier_now()) ELSE closed_at END
WHERE id = $1 AND notice_id = $2 AND member_id = $3
RETURNING {VIEW_COLUMNS}"""


async def open_view(conn: Connection, notice_id: str, member_id: str) -> Record | None:
    """The new view; None when the member has opened MAX_VIEWS of this notice already."""
    return await conn.fetchrow(OPEN_VIEW, notice_id, member_id)


async def update_view(
    conn: Connection, view_id: str, notice_id: str, member_id: str, visible: float | None, close: bool
) -> Record | None:
    return await conn.fetchrow(UPDATE_VIEW, view_id, notice_id, member_id, visible, close)


# --- reading the ledger ----------------------------------------------------------------------

LEDGER = """
SELECT code, source, points, day, awarded_at FROM point_awards
WHERE member_id = $1 AND day >= $2 AND day < $3 AND ($4::text IS NULL OR root_unit_id = $4)
ORDER BY awarded_at DESC, id DESC LIMIT $5"""
MEMBER_TOTALS = """
SELECT code, sum(points) FILTER (WHERE day >= $2 AND day < $3) AS total,
       count(*) FILTER (WHERE day >= $2 AND day < $3) AS actions,
       sum(points) FILTER (WHERE day = $4) AS today,
       sum(points) FILTER (WHERE day >= date_trunc('month', $4)::date AND day <= $4) AS month
FROM point_awards
WHERE member_id = $1 AND ($5::text IS NULL OR root_unit_id = $5)
  AND ((day >= $2 AND day < $3) OR (day >= date_trunc('month', $4)::date AND day <= $4))
GROUP BY code ORDER BY code"""


async def ledger(
    conn: Connection, member_id: str, start: date, end: date, root: str | None, limit: int
) -> list[Record]:
    return list(await conn.fetch(LEDGER, member_id, start, end, root, limit))


async def member_totals(
    conn: Connection, member_id: str, start: date, end: date, today: date, root: str | None
) -> list[Record]:
    """Per code: points and actions in [start, end), points today and this month (local)."""
    return list(await conn.fetch(MEMBER_TOTALS, member_id, start, end, today, root))


# Per child unit of $1 (and the unit itself, unit_id NULL): members of its subtree, those who
# earned at least a point of organisation $2 in [$3, $4), and their points. A member of two
# child units counts in each, once in the unit's own row.
UNIT_POINTS = f"""
WITH RECURSIVE {subtree("ARRAY[$1::text]")},
{ancestors("SELECT id, id FROM sub", "unit_id", stop_at="$1::text")},
mem AS (SELECT DISTINCT mu.member_id, mu.unit_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id),
branch AS (
    SELECT DISTINCT mem.member_id, up.id AS child FROM mem JOIN up ON up.unit_id = mem.unit_id
    WHERE up.parent_id = $1
),
pts AS (
    SELECT a.member_id, sum(a.points) AS points FROM point_awards a
    WHERE a.member_id IN (SELECT member_id FROM mem) AND a.root_unit_id = $2 AND a.day >= $3 AND a.day < $4
    GROUP BY a.member_id
)
SELECT NULL::text AS unit_id, NULL::text AS name, count(*) AS members,
       count(p.member_id) FILTER (WHERE p.points > 0) AS participants, coalesce(sum(p.points), 0) AS total
FROM (SELECT DISTINCT member_id FROM mem) m LEFT JOIN pts p ON p.member_id = m.member_id
UNION ALL
SELECT k.id, k.name, count(b.member_id), count(p.member_id) FILTER (WHERE p.points > 0), coalesce(sum(p.points), 0)
FROM units k LEFT JOIN branch b ON b.child = k.id LEFT JOIN pts p ON p.member_id = b.member_id
WHERE k.parent_id = $1
GROUP BY k.id, k.name"""


async def unit_points(conn: Connection, unit_id: str, root: str, start: date, end: date) -> list[Record]:
    return list(await conn.fetch(UNIT_POINTS, unit_id, root, start, end))
