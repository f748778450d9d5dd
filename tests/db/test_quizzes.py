"""db/quizzes.py: the quiz row as other slices create it (quizzes.insert)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from notifier.db import quizzes
from notifier.db.pool import create_pool
from notifier.settings import Settings


async def test_insert_stores_the_quiz_with_its_key(settings: Settings, db: asyncpg.Connection) -> None:
    questions = [{"id": "q1", "type": "true_false", "text": "?", "points": 2, "answer": True}]
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            row = await quizzes.insert(
                conn, scope_unit_id=None, created_by=None, title="t", questions=questions, max_score=2
            )
            again = await quizzes.get(conn, str(row["id"]))
    finally:
        await pool.close()
    assert again is not None
    assert again["questions"] == questions
    assert again["max_score"] == Decimal(2)
    assert (again["kind"], again["grading"], again["review"]) == ("quiz", "highest", "score")
