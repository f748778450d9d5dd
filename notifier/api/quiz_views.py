"""What each caller sees of a quiz and of an attempt (api/quizzes.py decides who is who).

The one place the answer key is written into a response: ``_question(..., key=True)``, for
owners only. Members see questions only inside an attempt, in its seeded order, and after
submitting what the quiz's ``review`` setting allows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from notifier.api.quiz_models import AttemptOut, QuizOut
from notifier.db.pool import Record
from notifier.domain import scoring


def _question(q: dict[str, Any], *, key: bool, options: list[str] | None = None) -> dict[str, Any]:
    by_id = {o["id"]: o for o in q.get("options", [])}
    order = options if options is not None else list(by_id)
    out: dict[str, Any] = {
        "id": q["id"],
        "type": q["type"],
        "text": q["text"],
        "points": q["points"],
        "options": [{"id": by_id[o]["id"], "text": by_id[o]["text"]} for o in order],
    }
    if q["type"] == "multiple":
        out["partial"] = q.get("partial") or "all_or_nothing"
    if key:
        out["answer"] = q["answer"]
    return out


def seen_after_submit(quiz: Record, now: datetime) -> Literal["score", "answers", "nothing"]:
    """What a member sees of a submitted attempt, by the quiz's review setting."""
    if quiz["review"] == "after_close":
        return "answers" if quiz["closes_at"] is not None and now >= quiz["closes_at"] else "nothing"
    return "answers" if quiz["review"] == "answers" else "score"


def _result(quiz: Record, row: Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    mark = quiz["pass_mark"]
    return {
        "score": float(row["score"]),
        "max_score": float(row["max_score"]),
        "passed": None if mark is None else row["score"] >= mark,
        "attempts": row["attempts"],
        "first_submitted_at": row["first_submitted_at"],
        "seconds_taken": None if row["seconds_taken"] is None else float(row["seconds_taken"]),
        "final": row["final"],
    }


def _dump(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    # exclude_unset: a question without "answer" (every member view) leaves it out, not null
    return model.model_validate(data).model_dump(mode="json", exclude_unset=True)


def quiz_view(quiz: Record, view: str, *, mine: dict[str, Any] | None = None) -> dict[str, Any]:
    questions = None
    if view != "member":
        questions = [_question(q, key=view == "owner") for q in quiz["questions"]]
    return _dump(
        QuizOut,
        {
            "id": str(quiz["id"]),
            "title": quiz["title"],
            "kind": quiz["kind"],
            "view": view,
            "scope_unit_id": quiz["scope_unit_id"],
            "question_count": len(quiz["questions"]),
            "max_score": float(quiz["max_score"]),
            "shuffle_questions": quiz["shuffle_questions"],
            "shuffle_options": quiz["shuffle_options"],
            "attempts_allowed": quiz["attempts_allowed"],
            "grading": quiz["grading"],
            "time_limit_seconds": quiz["time_limit_seconds"],
            "opens_at": quiz["opens_at"],
            "closes_at": quiz["closes_at"],
            "review": quiz["review"],
            "pass_mark": None if quiz["pass_mark"] is None else float(quiz["pass_mark"]),
            "notice_id": str(quiz["notice_id"]) if quiz["notice_id"] else None,
            "created_at": quiz["created_at"],
            "updated_at": quiz["updated_at"],
            "questions": questions,
            "mine": mine,
        },
    )


def attempt_view(
    quiz: Record, a: Record, result: Record | None, now: datetime, *, owner: bool
) -> dict[str, Any]:
    """An attempt as its member (or, ``owner``, the quiz's owners) sees it."""
    by_id = {q["id"]: q for q in quiz["questions"]}
    seed = a["seed"]
    order = scoring.question_order(seed, list(by_id), quiz["shuffle_questions"])
    questions = [
        _question(
            by_id[qid],
            key=False,
            options=scoring.option_order(
                seed, qid, [o["id"] for o in by_id[qid].get("options", [])], quiz["shuffle_options"]
            ),
        )
        for qid in order
    ]
    submitted = a["submitted_at"] is not None
    seen = "answers" if owner else seen_after_submit(quiz, now)
    per = a["question_scores"] or {}
    return _dump(
        AttemptOut,
        {
            "id": str(a["id"]),
            "quiz_id": str(a["quiz_id"]),
            "member_id": a["member_id"],
            "n": a["n"],
            "state": "submitted" if submitted else "open",
            "started_at": a["started_at"],
            "deadline": a["deadline"],
            "submitted_at": a["submitted_at"],
            "auto_submitted": a["auto_submitted"],
            "questions": questions,
            "answers": a["answers"],
            "max_score": float(quiz["max_score"]),
            "score": float(a["score"]) if submitted and seen != "nothing" else None,
            "review": (
                [
                    {"question_id": qid, "points": per.get(qid, 0), "answer": by_id[qid]["answer"]}
                    for qid in order
                ]
                if submitted and seen == "answers"
                else None
            ),
            "result": _result(quiz, result) if seen != "nothing" else None,
        },
    )


def mine_view(quiz: Record, attempts: list[Record], result: Record | None, now: datetime) -> dict[str, Any]:
    seen = seen_after_submit(quiz, now)
    used = sum(1 for a in attempts if a["submitted_at"] is not None)
    allowed = quiz["attempts_allowed"]
    return {
        "attempts": [
            {
                "id": str(a["id"]),
                "n": a["n"],
                "state": "submitted" if a["submitted_at"] is not None else "open",
                "started_at": a["started_at"],
                "deadline": a["deadline"],
                "submitted_at": a["submitted_at"],
                "auto_submitted": a["auto_submitted"],
                "score": float(a["score"]) if a["score"] is not None and seen != "nothing" else None,
            }
            for a in attempts
        ],
        "attempts_left": None if allowed is None else max(0, allowed - used),
        "result": _result(quiz, result) if seen != "nothing" else None,
    }
