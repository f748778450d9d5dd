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
