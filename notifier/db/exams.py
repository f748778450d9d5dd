"""exams, exam_excused and ranking_settings: a monthly test (a quiz of kind ``exam`` and the notice
it went out with), who is excused from it, and each organisation's leaderboard setting."""

from __future__ import annotations

from datetime import datetime

from notifier.db.pool import Connection, Record
from notifier.db.units import ancestors

INSERT = """
INSERT INTO exams (quiz_id, notice_id, tie_break, remind_before) VALUES ($1, $2, $3, $4)
RETURNING quiz_id, notice_id, tie_break, remind_before, created_at"""

# A quiz with what ranking it needs: its notice (an exam's, or the quiz's own) and its tie-break.
RANKABLE = """
SELECT q.id, q.kind, q.title, q.closes_at, q.pass_mark, q.max_score, q.scope_unit_id,
       coalesce(x.notice_id, q.notice_id) AS notice_id, coalesce(x.tie_break, 'none') AS tie_break,
       q.closes_at IS NOT NULL AND q.closes_at <= notifier_now() AS closed
FROM quizzes q LEFT JOIN exams x ON x.quiz_id = q.id WHERE q.id = $1"""

# The tests a caller sees (those whose notice reached or was created under unit $1; NULL: every
# test), newest first, with their counts.  $2 limit  $3, $4 cursor (created_at, quiz id)
LIST = """
SELECT q.id, q.title, q.opens_at, q.closes_at, q.pass_mark, q.max_score, x.notice_id, x.tie_break,
       x.created_at, q.closes_at <= notifier_now() AS closed,
       (SELECT count(*) FROM recipients r WHERE r.notice_id = x.notice_id)::int AS recipients,
       (SELECT count(*) FROM quiz_results s WHERE s.quiz_id = q.id)::int AS taken
FROM exams x JOIN quizzes q ON q.id = x.quiz_id
WHERE ($1::text IS NULL OR EXISTS (SELECT 1 FROM notice_reach r WHERE r.notice_id = x.notice_id AND r.unit_id = $1))
  AND ($3::timestamptz IS NULL OR (x.created_at, x.quiz_id) < ($3, $4::uuid))
ORDER BY x.created_at DESC, x.quiz_id DESC
LIMIT $2"""

EXCUSE = """
INSERT INTO exam_excused (quiz_id, member_id, reason) VALUES ($1, $2, $3)
ON CONFLICT (quiz_id, member_id) DO UPDATE SET reason = excluded.reason"""
UNEXCUSE = "DELETE FROM exam_excused WHERE quiz_id = $1 AND member_id = $2"

SETTINGS = "SELECT unit_id, show_names, updated_at FROM ranking_settings WHERE unit_id = $1"
PUT_SETTINGS = """
INSERT INTO ranking_settings (unit_id, show_names) VALUES ($1, $2)
ON CONFLICT (unit_id) DO UPDATE SET show_names = excluded.show_names, updated_at = notifier_now()
RETURNING unit_id, show_names, updated_at"""

EXAM_IDS = "SELECT quiz_id::text FROM exams WHERE quiz_id = ANY($1::uuid[])"
QUIZ_OF_NOTICE = "SELECT id, kind FROM quizzes WHERE notice_id = $1"

# Whether the organisation(s) of member $1 show names on leaderboards: every root above the
# member's units has said so (one organisation that has not keeps them hidden).
SHOWS_NAMES = (
    "WITH RECURSIVE "
    + ancestors("SELECT member_id, unit_id FROM member_units WHERE member_id = $1", "member")
    + """
SELECT coalesce(bool_and(coalesce(s.show_names, false)), false)
FROM up LEFT JOIN ranking_settings s ON s.unit_id = up.id WHERE up.parent_id IS NULL"""
)
# The member's own units, as the notice's fan-out recorded them.
OWN_UNITS = "SELECT direct_units FROM recipients WHERE notice_id = $1 AND member_id = $2"


async def insert(
    conn: Connection, quiz_id: str, notice_id: str, tie_break: str, remind_before: list[float]
) -> Record:
    row = await conn.fetchrow(INSERT, quiz_id, notice_id, tie_break, remind_before)
    assert row is not None
    return row


async def rankable(conn: Connection, quiz_id: str) -> Record | None:
    return await conn.fetchrow(RANKABLE, quiz_id)


async def list_exams(
    conn: Connection, unit_id: str | None, limit: int, after: tuple[datetime, str] | None
) -> list[Record]:
    at, quiz_id = after if after else (None, None)
    return list(await conn.fetch(LIST, unit_id, limit, at, quiz_id))


async def excuse(conn: Connection, quiz_id: str, member_id: str, reason: str | None) -> None:
    if reason is None:
        await conn.execute(UNEXCUSE, quiz_id, member_id)
    else:
        await conn.execute(EXCUSE, quiz_id, member_id, reason)


async def settings(conn: Connection, unit_id: str) -> Record | None:
    return await conn.fetchrow(SETTINGS, unit_id)


async def put_settings(conn: Connection, unit_id: str, show_names: bool) -> Record:
    row = await conn.fetchrow(PUT_SETTINGS, unit_id, show_names)
    assert row is not None
    return row


async def shows_names(conn: Connection, member_id: str) -> bool:
    return bool(await conn.fetchval(SHOWS_NAMES, member_id))


async def exam_ids(conn: Connection, quiz_ids: list[str]) -> set[str]:
    """Which of these quizzes are monthly tests."""
    if not quiz_ids:
        return set()
    return {r[0] for r in await conn.fetch(EXAM_IDS, quiz_ids)}


async def quiz_of_notice(conn: Connection, notice_id: str) -> Record | None:
    """The quiz (or test) a notice went out with, if any."""
    return await conn.fetchrow(QUIZ_OF_NOTICE, notice_id)


async def own_units(conn: Connection, notice_id: str, member_id: str) -> list[str]:
    return list(await conn.fetchval(OWN_UNITS, notice_id, member_id) or [])
