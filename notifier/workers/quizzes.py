"""Quiz deadlines and what a submission entails.

An open attempt past its deadline (time limit, or the quiz's close) is submitted as of the
deadline with the answers saved before it (``auto_submitted``). Two paths do it, with the same
function (:func:`settle`): the one-second tick for every overdue attempt, and any request that
touches a member's attempts of a quiz (lazily, so a member never sees an attempt that should
have ended). Rows are claimed ``FOR UPDATE SKIP LOCKED``; the submit statement only submits an
attempt still open, so two paths never submit twice.

Every submission, by the member or by the clock, goes through :func:`submit` in the caller's
transaction: the attempts are scored (domain/scoring.py), stored with the members' graded
results (db/quizzes.SUBMIT), the quiz's notice is marked read (``via: quiz``; a lesson's read earns
``lesson_read`` as on every read path, dwell permitting) and, when a result
is final for the first time, the member earns ``quiz_full`` (full marks) or ``quiz_partial``
(some points) once per quiz.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from notifier.db import exams, points, quizzes, receipts
from notifier.db.pool import Connection, Record
from notifier.domain import scoring
from notifier.workers.context import WorkerDeps

log = logging.getLogger(__name__)

MAX_PER_TICK = 500


def scored(
    attempt_id: str, questions: list[dict[str, Any]], answers: dict[str, Any], at: datetime, *, auto: bool
) -> dict[str, Any]:
    """The row db/quizzes.submit takes for one attempt."""
    total, per = scoring.score_attempt(questions, answers)
    return {
        "id": attempt_id,
        "score": str(total),
        "question_scores": {qid: float(v) for qid, v in per.items()},
        "answers": answers,
        "submitted_at": at.isoformat(),
        "auto": auto,
    }


async def award(conn: Connection, results: list[Record]) -> int:
    """Points for results final for the first time: ``quiz_full`` for full marks, ``quiz_partial``
    for some points, once per (member, quiz) -- the ledger's key; the points awarded."""
    by_code: dict[str, list[Record]] = {"quiz_full": [], "quiz_partial": []}
    for r in results:
        if r["score"] > 0:
            by_code["quiz_full" if r["score"] >= r["max_score"] else "quiz_partial"].append(r)
    # A monthly test taken earns ``exam_taken`` too, whatever the score (api/exams.py).
    tests = await exams.exam_ids(conn, sorted({str(r["quiz_id"]) for r in results}))
    by_code["exam_taken"] = [r for r in results if str(r["quiz_id"]) in tests]
    total = 0
    for code, rows in by_code.items():
        if rows:
            got = await points.award_many(
                conn, [r["member_id"] for r in rows], code, [f"quiz:{r['quiz_id']}" for r in rows]
            )
            total += sum(got.values())
    return total


async def submit(conn: Connection, rows: list[dict[str, Any]]) -> list[Record]:
    """Submit scored attempts in the caller's transaction, with their receipts and points."""
    done = await quizzes.submit(conn, rows)
    read = [r for r in done if r["notice_id"] is not None]
    if read:
        recorded = await receipts.mark_read_many(
            conn, [str(r["notice_id"]) for r in read], [r["member_id"] for r in read], "quiz"
        )
        # A lesson's quiz: its read is a lesson read like any other (lesson_read, dwell permitting).
        await points.award_lesson_reads(
            conn, [str(r["notice_id"]) for r in recorded], [r["member_id"] for r in recorded]
        )
    await award(conn, [r for r in done if r["newly_final"]])
    return done


async def settle(
    conn: Connection, *, quiz_id: str | None = None, member_id: str | None = None, limit: int = MAX_PER_TICK
) -> int:
    """Submit overdue attempts as of their deadlines and finalise results of closed quizzes (all,
    or one member's of one quiz); returns how many attempts it submitted."""
    due = await quizzes.overdue(conn, quiz_id=quiz_id, member_id=member_id, limit=limit)
    rows = [scored(str(r["id"]), r["questions"], r["answers"], r["deadline"], auto=True) for r in due]
    done = await submit(conn, rows)
    await award(conn, await quizzes.finalise_closed(conn, quiz_id=quiz_id, member_id=member_id, limit=limit))
    return len(done)


async def settle_member(conn: Connection, quiz_id: str, member_id: str) -> int:
    """Before a request reads or changes a member's attempts of a quiz: hold them (to the end of
    the transaction) and submit the open one if its deadline has passed -- after waiting for a
    tick that is submitting it right now, so the request sees it submitted."""
    await quizzes.lock_member(conn, quiz_id, member_id)
    await quizzes.lock_open(conn, quiz_id, member_id)
    return await settle(conn, quiz_id=quiz_id, member_id=member_id)


async def submit_overdue(deps: WorkerDeps) -> int:
    """Tick part: every overdue attempt, as of its deadline."""
    async with deps.pool.acquire() as conn, conn.transaction():
        n = await settle(conn)
    if n:
        log.info("auto-submitted %d quiz attempts at their deadlines", n)
    return n
