"""db/quizzes.py: the quiz row as other slices create it (quizzes.insert), and the graded result
the submit statement writes by each grading method."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from notifier.db import quizzes
from notifier.db.pool import Pool, create_pool
from notifier.settings import Settings
from notifier.workers import quizzes as engine
from tests.conftest import advance_clock, frozen_clock

QUESTIONS = [
    {"id": "q1", "type": "true_false", "text": "?", "points": 2, "answer": True},
    {"id": "q2", "type": "fill_in", "text": "?", "points": 4, "answer": ["x"]},
]


@pytest.fixture
async def pool(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[Pool]:
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'U')")
    await db.execute("INSERT INTO members (id, name) VALUES ('m', 'M')")
    await db.execute("INSERT INTO member_units VALUES ('m', 'u')")
    p = await create_pool(settings)
    yield p
    await p.close()


async def test_insert_stores_the_quiz_with_its_key(pool: Pool) -> None:
    async with pool.acquire() as conn:
        row = await quizzes.insert(
            conn, scope_unit_id="u", created_by=None, title="t", questions=QUESTIONS, max_score=6
        )
        again = await quizzes.get(conn, str(row["id"]))
    assert again is not None
    assert again["questions"] == QUESTIONS
    assert again["max_score"] == Decimal(6)
    assert (again["kind"], again["grading"], again["review"]) == ("quiz", "highest", "score")


# Three attempts scoring 2, 6, 4 (2 s, 5 s, 9 s long), by each grading method:
# (score, seconds_taken, which attempt counts (n), final after the 1st / 2nd / 3rd attempt).
GRADING = {
    "highest": ("6.00", "5", 2, [False, False, True]),
    "last": ("4.00", "9", 3, [False, False, True]),
    "first": ("2.00", "2", 1, [True, True, True]),
    "average": ("4.00", "5.333", None, [False, False, True]),
}


@pytest.mark.parametrize("grading", list(GRADING))
async def test_submit_grades_by_the_quiz_method(pool: Pool, db: asyncpg.Connection, grading: str) -> None:
    score, seconds, counts, finals = GRADING[grading]
    async with frozen_clock(db), pool.acquire() as conn:
        quiz = await quizzes.insert(
            conn,
            scope_unit_id="u",
            created_by=None,
            title="t",
            questions=QUESTIONS,
            max_score=6,
            grading=grading,
            attempts_allowed=3,
        )
        qid = str(quiz["id"])
        ids = []
        was_final = False
        tries: list[tuple[dict[str, Any], int]] = [
            ({"q1": True}, 2),
            ({"q1": True, "q2": " X "}, 5),
            ({"q2": "x"}, 9),
        ]
        for (answers, secs), final in zip(tries, finals, strict=True):
            a = await quizzes.start(conn, qid, "m", 1)
            ids.append(a["id"])
            await advance_clock(db, secs)
            now = await conn.fetchval("SELECT notifier_now()")
            async with conn.transaction():
                done = await engine.submit(
                    conn, [engine.scored(str(a["id"]), QUESTIONS, answers, now, auto=False)]
                )
            assert [(r["final"], r["newly_final"]) for r in done] == [(final, final and not was_final)]
            was_final = final
            # a second submit of the same attempt does nothing
            assert (
                await engine.submit(conn, [engine.scored(str(a["id"]), QUESTIONS, {}, now, auto=False)]) == []
            )
        result = await quizzes.result(conn, qid, "m")
    assert result is not None
    assert (result["score"], result["attempts"], result["final"]) == (Decimal(score), 3, True)
    assert round(result["seconds_taken"], 3) == Decimal(seconds)
    assert result["attempt_id"] == (None if counts is None else ids[counts - 1])
    scores = await db.fetch("SELECT score FROM quiz_attempts WHERE quiz_id = $1 ORDER BY n", quiz["id"])
    assert [r["score"] for r in scores] == [Decimal("2.00"), Decimal("6.00"), Decimal("4.00")]
