"""A test's ranking, read from its notice's recipients and the quiz's graded results.

Expected takers are the notice's recipients (the fan-out snapshotted the units each is counted in,
``recipients.units``: a unit's subtree is one array test), less the members excused from the test.
Participants are the expected takers with a graded result (``quiz_results``). Members are ranked
by SQL ``RANK()`` (1, 2, 2, 4); branch counts are summed here and ordered by domain/ranking.py.
"""

from __future__ import annotations

from decimal import Decimal

from notifier.db.pool import Connection, Record
from notifier.domain.ranking import BranchCounts

#   $1 notice  $2 quiz  $3 units whose subtrees bound the slice (empty: every recipient)
_EXPECTED = """
expected AS (
    SELECT r.member_id, r.units, r.direct_units FROM recipients r
    WHERE r.notice_id = $1 AND (cardinality($3::text[]) = 0 OR r.units && $3::text[])
      AND NOT EXISTS (SELECT 1 FROM exam_excused x WHERE x.quiz_id = $2 AND x.member_id = r.member_id)
)"""
_RANKED = """
ranked AS (
    SELECT e.member_id, q.score, q.max_score, q.seconds_taken, q.first_submitted_at,
           rank() OVER (ORDER BY q.score DESC{tie}) AS rank
    FROM expected e JOIN quiz_results q ON q.quiz_id = $2 AND q.member_id = e.member_id
)"""
_TIE = {"none": "", "time": ", q.seconds_taken ASC NULLS LAST"}

# The slice's members, takers by rank (then id), non-takers after them.  $4 limit  $5 offset
MEMBERS = {
    tie: "WITH"
    + _EXPECTED
    + ","
    + _RANKED.format(tie=sql)
    + """
SELECT e.member_id, m.name, e.direct_units, k.score, k.max_score, k.seconds_taken, k.first_submitted_at, k.rank
FROM expected e JOIN members m ON m.id = e.member_id LEFT JOIN ranked k ON k.member_id = e.member_id
ORDER BY k.rank NULLS LAST, e.member_id
LIMIT $4 OFFSET $5"""
    for tie, sql in _TIE.items()
}

# One member's result and rank among every taker of the test.  $4 member
ME = {
    tie: "WITH"
    + _EXPECTED
    + ","
    + _RANKED.format(tie=sql)
    + """
SELECT k.*, (SELECT count(*) FROM ranked) AS takers FROM ranked k WHERE k.member_id = $4"""
    for tie, sql in _TIE.items()
}

# The slice as one row.  $4 pass mark (NULL: none)
_COUNTS = """count(e.member_id)::int AS expected, count(q.member_id)::int AS participants,
       coalesce(sum(q.score), 0)::numeric AS score_sum,
       (count(q.member_id) FILTER (WHERE q.score >= $4::numeric))::int AS passed"""
SUMMARY = f"""WITH{_EXPECTED}
SELECT {_COUNTS}
FROM expected e LEFT JOIN quiz_results q ON q.quiz_id = $2 AND q.member_id = e.member_id"""

# Each child of unit $5 (NULL: each root) over its subtree; a member in two children counts in both.
BRANCHES = f"""WITH{_EXPECTED},
rows AS (SELECT u.id AS unit_id, u.name FROM units u WHERE u.parent_id IS NOT DISTINCT FROM $5::text)
SELECT rows.unit_id, rows.name, {_COUNTS}
FROM rows LEFT JOIN expected e ON rows.unit_id = ANY(e.units)
LEFT JOIN quiz_results q ON q.quiz_id = $2 AND q.member_id = e.member_id
GROUP BY rows.unit_id, rows.name"""


# Which of members $2 are recipients of notice $1 inside the slice $3 (empty: anywhere).
WITHIN = """
SELECT member_id FROM recipients
WHERE notice_id = $1 AND member_id = ANY($2::text[]) AND (cardinality($3::text[]) = 0 OR units && $3::text[])"""


async def recipients_within(
    conn: Connection, notice_id: str, member_ids: list[str], roots: list[str] | None
) -> set[str]:
    return {r["member_id"] for r in await conn.fetch(WITHIN, notice_id, member_ids, roots or [])}


async def members(
    conn: Connection,
    notice_id: str,
    quiz_id: str,
    roots: list[str] | None,
    *,
    tie_break: str,
    limit: int,
    offset: int = 0,
) -> list[Record]:
    return list(await conn.fetch(MEMBERS[tie_break], notice_id, quiz_id, roots or [], limit, offset))


async def member(
    conn: Connection, notice_id: str, quiz_id: str, member_id: str, *, tie_break: str
) -> Record | None:
    return await conn.fetchrow(ME[tie_break], notice_id, quiz_id, [], member_id)


async def summary(
    conn: Connection, notice_id: str, quiz_id: str, roots: list[str] | None, pass_mark: Decimal | None
) -> Record:
    row = await conn.fetchrow(SUMMARY, notice_id, quiz_id, roots or [], pass_mark)
    assert row is not None
    return row


async def branches(
    conn: Connection, notice_id: str, quiz_id: str, parent: str | None, pass_mark: Decimal | None
) -> list[BranchCounts]:
    roots = [] if parent is None else [parent]
    rows = await conn.fetch(BRANCHES, notice_id, quiz_id, roots, pass_mark, parent)
    return [
        BranchCounts(r["unit_id"], r["name"], r["expected"], r["participants"], r["score_sum"], r["passed"])
        for r in rows
    ]
