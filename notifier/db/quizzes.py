"""quizzes, quiz_attempts and quiz_results: a quiz with its answer key, each member's attempts,
and each member's graded result.

The answer key lives in ``quizzes.questions``; nothing here strips it -- the API's member view
does (api/quizzes.py). ``quiz_results`` is derived from the submitted attempts by the quiz's
grading method and is rewritten by the same statement that submits (``SUBMIT``), so it never
disagrees with the attempts.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from notifier.db.pool import Connection, Record

QUIZ_COLUMNS = """id, scope_unit_id, created_by, title, kind, questions, shuffle_questions, shuffle_options,
    attempts_allowed, grading, time_limit_seconds, opens_at, closes_at, review, pass_mark, max_score,
    notice_id, created_at, updated_at"""

INSERT = f"""
INSERT INTO quizzes (scope_unit_id, created_by, title, kind, questions, shuffle_questions, shuffle_options,
                     attempts_allowed, grading, time_limit_seconds, opens_at, closes_at, review, pass_mark,
                     max_score, notice_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
RETURNING {QUIZ_COLUMNS}"""

GET = f"SELECT {QUIZ_COLUMNS} FROM quizzes WHERE id = $1"


async def insert(
    conn: Connection,
    *,
    scope_unit_id: str | None,
    created_by: str | None,
    title: str,
    questions: list[dict[str, Any]],
    max_score: Decimal | float | int,
    kind: str = "quiz",
    shuffle_questions: bool = False,
    shuffle_options: bool = False,
    attempts_allowed: int | None = None,
    grading: str = "highest",
    time_limit_seconds: int | None = None,
    opens_at: datetime | None = None,
    closes_at: datetime | None = None,
    review: str = "score",
    pass_mark: Decimal | float | int | None = None,
    notice_id: str | None = None,
) -> Record:
    """Store one quiz (questions WITH their answer key, as checked by the API's QuizIn)."""
    row = await conn.fetchrow(
        INSERT,
        scope_unit_id,
        created_by,
        title,
        kind,
        questions,
        shuffle_questions,
        shuffle_options,
        attempts_allowed,
        grading,
        time_limit_seconds,
        opens_at,
        closes_at,
        review,
        None if pass_mark is None else Decimal(str(pass_mark)),
        Decimal(str(max_score)),
        notice_id,
    )
    assert row is not None
    return row


async def get(conn: Connection, quiz_id: str) -> Record | None:
    return await conn.fetchrow(GET, quiz_id)


# A member may see and take a quiz that went out to them: they are a recipient of its notice.
FOR_MEMBER = f"""
SELECT {QUIZ_COLUMNS} FROM quizzes q
WHERE q.id = $1 AND EXISTS (SELECT 1 FROM recipients r WHERE r.notice_id = q.notice_id AND r.member_id = $2)"""

# Serialises starting, saving and submitting for one (quiz, member) to the end of the transaction.
MEMBER_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1::text || ':' || $2, 2023))"

# The member's open attempt, locked (waiting for a tick that is submitting it right now).
LOCK_OPEN = """
SELECT id FROM quiz_attempts WHERE quiz_id = $1 AND member_id = $2 AND submitted_at IS NULL FOR UPDATE"""

ATTEMPT_COLUMNS = """a.id, a.quiz_id, a.member_id, a.n, a.seed, a.started_at, a.deadline, a.answers, a.saved_at,
    a.submitted_at, a.auto_submitted, a.score, a.question_scores"""

ATTEMPT = f"SELECT {ATTEMPT_COLUMNS} FROM quiz_attempts a WHERE a.id = $1 AND a.quiz_id = $2"
ATTEMPTS_OF = f"""
SELECT {ATTEMPT_COLUMNS} FROM quiz_attempts a WHERE a.quiz_id = $1 AND a.member_id = $2 ORDER BY a.n"""

# A new attempt: numbered after the member's last, its order seeded, its deadline the earlier of
# the time limit and the quiz's close. The open-attempt index refuses a second open one.
#   $1 quiz  $2 member  $3 seed
START = f"""
INSERT INTO quiz_attempts AS a (quiz_id, member_id, n, seed, started_at, deadline)
SELECT q.id, $2, coalesce((SELECT max(n) FROM quiz_attempts WHERE quiz_id = q.id AND member_id = $2), 0) + 1,
       $3, (SELECT notifier_now()),
       CASE WHEN q.time_limit_seconds IS NULL THEN q.closes_at
            ELSE least((SELECT notifier_now()) + make_interval(secs => q.time_limit_seconds), q.closes_at) END
FROM quizzes q WHERE q.id = $1
RETURNING {ATTEMPT_COLUMNS}"""

# Save answers into an open attempt before its deadline: given questions replace the saved ones,
# a null clears one.  $1 attempt  $2 answers
SAVE = f"""
UPDATE quiz_attempts a SET answers = jsonb_strip_nulls(a.answers || $2::jsonb), saved_at = (SELECT notifier_now())
WHERE a.id = $1 AND a.submitted_at IS NULL AND (a.deadline IS NULL OR a.deadline > (SELECT notifier_now()))
RETURNING {ATTEMPT_COLUMNS}"""

# Open attempts whose deadline has passed (all, or one member's of one quiz), with their quiz's
# questions, locked for submitting; a row another transaction holds is left to it.
#   $1 quiz or NULL  $2 member or NULL  $3 limit
OVERDUE = """
SELECT a.id, a.answers, a.deadline, q.questions FROM quiz_attempts a JOIN quizzes q ON q.id = a.quiz_id
WHERE a.submitted_at IS NULL AND a.deadline <= (SELECT notifier_now())
  AND ($1::uuid IS NULL OR a.quiz_id = $1) AND ($2::text IS NULL OR a.member_id = $2)
ORDER BY a.deadline, a.id
LIMIT $3
FOR UPDATE OF a SKIP LOCKED"""

# Submit scored attempts and rewrite their members' results, in one statement. The result is the
# quiz's grading method over the member's submitted attempts (these included: a statement does
# not see its own updates, so they come from the UPDATE's RETURNING):
#   highest: the best score (the earliest attempt of equal ones counts), last / first: that
#   attempt's, average: the mean (rounded to 0.01; seconds_taken the mean too, no attempt counts).
# A result is final when it can no longer change: grading 'first', every allowed attempt used, or
# the quiz closed. Answers: each submitted attempt and its result, with newly_final when this
# statement made it final (points are awarded then, once).
#   $1 [{id, score, question_scores, answers, submitted_at, auto}]
SUBMIT = """
WITH s AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb)
        AS s(id uuid, score numeric, question_scores jsonb, answers jsonb, submitted_at timestamptz, auto boolean)
),
upd AS (
    UPDATE quiz_attempts a SET submitted_at = s.submitted_at, score = s.score,
        question_scores = s.question_scores, auto_submitted = s.auto, answers = s.answers
    FROM s WHERE a.id = s.id AND a.submitted_at IS NULL
    RETURNING a.id, a.quiz_id, a.member_id, a.n, a.started_at, a.submitted_at, a.score
),
pairs AS (SELECT DISTINCT quiz_id, member_id FROM upd),
att AS (
    SELECT a.id, a.quiz_id, a.member_id, a.n, a.started_at, a.submitted_at, a.score
    FROM quiz_attempts a JOIN pairs p USING (quiz_id, member_id)
    WHERE a.submitted_at IS NOT NULL AND a.id NOT IN (SELECT id FROM upd)
    UNION ALL SELECT * FROM upd
),
ranked AS (
    SELECT att.*, q.grading, q.max_score, q.attempts_allowed, q.closes_at,
           extract(epoch FROM att.submitted_at - att.started_at) AS secs,
           row_number() OVER (PARTITION BY att.quiz_id, att.member_id ORDER BY
               CASE WHEN q.grading = 'highest' THEN att.score END DESC NULLS LAST,
               CASE WHEN q.grading = 'last' THEN att.n END DESC NULLS LAST, att.n) AS rk,
           count(*) OVER w AS attempts, min(att.submitted_at) OVER w AS first_at,
           avg(att.score) OVER w AS mean_score,
           avg(extract(epoch FROM att.submitted_at - att.started_at)) OVER w AS mean_secs
    FROM att JOIN quizzes q ON q.id = att.quiz_id
    WINDOW w AS (PARTITION BY att.quiz_id, att.member_id)
),
prev AS (
    SELECT r.quiz_id, r.member_id, r.final FROM quiz_results r JOIN pairs p USING (quiz_id, member_id)
),
res AS (
    INSERT INTO quiz_results AS r (quiz_id, member_id, score, max_score, attempts, first_submitted_at,
                                   seconds_taken, attempt_id, final, final_at, updated_at)
    SELECT quiz_id, member_id,
           CASE WHEN grading = 'average' THEN round(mean_score, 2) ELSE score END, max_score, attempts, first_at,
           CASE WHEN grading = 'average' THEN round(mean_secs, 3) ELSE secs END,
           CASE WHEN grading = 'average' THEN NULL ELSE id END,
           fin, CASE WHEN fin THEN (SELECT notifier_now()) END, (SELECT notifier_now())
    FROM (SELECT ranked.*, (grading = 'first' OR attempts >= coalesce(attempts_allowed, attempts + 1)
                            OR coalesce(closes_at <= (SELECT notifier_now()), false)) AS fin
          FROM ranked WHERE rk = 1) x
    ORDER BY quiz_id, member_id
    ON CONFLICT (quiz_id, member_id) DO UPDATE SET score = excluded.score, attempts = excluded.attempts,
        first_submitted_at = excluded.first_submitted_at, seconds_taken = excluded.seconds_taken,
        attempt_id = excluded.attempt_id, final = r.final OR excluded.final,
        final_at = coalesce(r.final_at, excluded.final_at), updated_at = excluded.updated_at
    RETURNING r.quiz_id, r.member_id, r.score, r.max_score, r.final
)
SELECT upd.id AS attempt_id, res.quiz_id, res.member_id, res.score, res.max_score, res.final,
       res.final AND NOT coalesce(prev.final, false) AS newly_final, q.notice_id
FROM upd JOIN res USING (quiz_id, member_id) JOIN quizzes q ON q.id = res.quiz_id
LEFT JOIN prev USING (quiz_id, member_id)
ORDER BY upd.id"""

# Results of closed quizzes that are not final yet (unlimited attempts, or some left), with no
# attempt still open: final now.  $1 quiz or NULL  $2 member or NULL  $3 limit
FINALISE_CLOSED = """
WITH due AS (
    SELECT r.quiz_id, r.member_id FROM quiz_results r JOIN quizzes q ON q.id = r.quiz_id
    WHERE NOT r.final AND q.closes_at <= (SELECT notifier_now())
      AND ($1::uuid IS NULL OR r.quiz_id = $1) AND ($2::text IS NULL OR r.member_id = $2)
      AND NOT EXISTS (SELECT 1 FROM quiz_attempts a WHERE a.quiz_id = r.quiz_id AND a.member_id = r.member_id
                      AND a.submitted_at IS NULL)
    ORDER BY r.quiz_id, r.member_id LIMIT $3
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE quiz_results r SET final = true, final_at = (SELECT notifier_now()), updated_at = (SELECT notifier_now())
FROM due WHERE r.quiz_id = due.quiz_id AND r.member_id = due.member_id
RETURNING r.quiz_id, r.member_id, r.score, r.max_score"""

RESULT = """
SELECT quiz_id, member_id, score, max_score, attempts, first_submitted_at, seconds_taken, attempt_id, final,
       final_at FROM quiz_results WHERE quiz_id = $1 AND member_id = $2"""

SET_NOTICE = "UPDATE quizzes SET notice_id = $2, updated_at = (SELECT notifier_now()) WHERE id = $1"


async def for_member(conn: Connection, quiz_id: str, member_id: str) -> Record | None:
    """The quiz, when it went out to this member (they are a recipient of its notice)."""
    return await conn.fetchrow(FOR_MEMBER, quiz_id, member_id)


async def lock_member(conn: Connection, quiz_id: str, member_id: str) -> None:
    await conn.execute(MEMBER_LOCK, quiz_id, member_id)


async def lock_open(conn: Connection, quiz_id: str, member_id: str) -> None:
    await conn.execute(LOCK_OPEN, quiz_id, member_id)


async def attempt(conn: Connection, quiz_id: str, attempt_id: str) -> Record | None:
    return await conn.fetchrow(ATTEMPT, attempt_id, quiz_id)


async def attempts_of(conn: Connection, quiz_id: str, member_id: str) -> list[Record]:
    return list(await conn.fetch(ATTEMPTS_OF, quiz_id, member_id))


async def start(conn: Connection, quiz_id: str, member_id: str, seed: int) -> Record:
    row = await conn.fetchrow(START, quiz_id, member_id, seed)
    assert row is not None
    return row


async def save(conn: Connection, attempt_id: str, answers: dict[str, Any]) -> Record | None:
    """Merge ``answers`` into the open attempt; None when it is submitted or past its deadline."""
    return await conn.fetchrow(SAVE, attempt_id, answers)


async def overdue(
    conn: Connection, *, quiz_id: str | None = None, member_id: str | None = None, limit: int = 500
) -> list[Record]:
    return list(await conn.fetch(OVERDUE, quiz_id, member_id, limit))


async def submit(conn: Connection, scored: list[dict[str, Any]]) -> list[Record]:
    """Submit scored attempts ({id, score, question_scores, submitted_at, auto}) and rewrite the
    members' results; one row per attempt submitted now (an attempt already submitted: none)."""
    if not scored:
        return []
    return list(await conn.fetch(SUBMIT, scored))


async def finalise_closed(
    conn: Connection, *, quiz_id: str | None = None, member_id: str | None = None, limit: int = 500
) -> list[Record]:
    return list(await conn.fetch(FINALISE_CLOSED, quiz_id, member_id, limit))


async def result(conn: Connection, quiz_id: str, member_id: str) -> Record | None:
    return await conn.fetchrow(RESULT, quiz_id, member_id)


async def set_notice(conn: Connection, quiz_id: str, notice_id: str) -> None:
    await conn.execute(SET_NOTICE, quiz_id, notice_id)
