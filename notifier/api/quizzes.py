"""/v1/quizzes: quizzes scored on the server, their attempts and answers.

Who sees what (anything else answers 404):

- **owners** -- an admin, or a service or secretary key whose subtree holds the unit that created
  the quiz -- see it whole, answer key included, and any attempt at it;
- **readers** -- a unit-bound key whose units the quiz's notice reached -- see it without the key;
- **members** see a quiz that went out to them (they are a recipient of its notice): its settings,
  their attempts and result, never the questions outside an attempt and never the key. Only they
  take it.

The answer key never leaves the server in a member's response: an attempt shows the questions in
its own seeded order without ``answer``; after submitting, what the member sees follows the quiz's
``review`` setting -- ``score`` (the score only), ``answers`` (the score, the points of each
question and the right answers), ``after_close`` (nothing until the quiz closes, then as
``answers``). Scoring rules: domain/scoring.py. Deadlines and what a submission entails (the
notice's read receipt, points): workers/quizzes.py.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from notifier.api import audit
from notifier.api.keys import DEPS, principal
from notifier.api.notices import (
    IDEMPOTENCY_HEADER,
    Audience,
    NoticeIn,
    create_once,
    idempotency_key,
    insert_notice,
    request_digest,
    require_channels,
    wake_fanout,
)
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid_many, not_found
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.types import Channels, Id, Name, Strict, Timestamp, parse_uuid
from notifier.db import quizzes, receipts, units
from notifier.db.pool import Connection, Record
from notifier.db.visibility import visible_notice
from notifier.domain import scoring
from notifier.domain.escalation import PolicyRules
from notifier.domain.scoring import PartialMode, QuestionType
from notifier.workers import quizzes as engine

routes = Router()

MAX_QUESTIONS = 200
MAX_OPTIONS = 26
MAX_ACCEPTED = 20

Answer = str | bool | list[str]


# --- request bodies -----------------------------------------------------------------------------


class OptionIn(Strict):
    id: Id
    text: str = Field(min_length=1, max_length=1000)


class QuestionIn(Strict):
    id: Id = Field(description="unique in the quiz; answers name questions by it")
    type: QuestionType
    text: str = Field(min_length=1, max_length=5000)
    points: int = Field(ge=1, le=1000)
    options: list[OptionIn] = Field(
        default_factory=list, max_length=MAX_OPTIONS, description="single and multiple choice: 2 or more"
    )
    answer: Answer = Field(
        description="the key, never shown to members: single -- the right option's id; multiple -- the "
        "right options' ids; true_false -- true or false; fill_in -- the accepted answers (compared "
        "after NFKC normalisation, case folding and collapsing whitespace)"
    )
    partial: PartialMode | None = Field(
        default=None,
        description="multiple choice only (default all_or_nothing): right_minus_wrong = points x "
        "max(0, right picks - wrong picks) / right options; half_if_missing = half when a right option "
        "is missing and nothing wrong is picked (少选得一半分), 0 for any wrong pick",
    )


class QuizNoticeIn(Strict):
    """Send the quiz now, as a notice (kind ``notice``; an ``exam`` quiz: kind ``exam``)."""

    body: str = Field(min_length=1, max_length=20_000)
    audience: Audience
    channels: Channels = Field(default_factory=lambda: ["inapp"], min_length=1, max_length=16)
    fallback: bool = False
    escalation: Name | PolicyRules | None = None
    send_at: Timestamp | None = None
    expires_at: Timestamp | None = None

    @model_validator(mode="after")
    def _times(self) -> QuizNoticeIn:
        if self.expires_at is not None and self.send_at is not None and self.expires_at <= self.send_at:
            raise ValueError("expires_at must be after send_at")
        return self


class QuizIn(Strict):
    title: str = Field(min_length=1, max_length=200)
    kind: Literal["quiz", "exam"] = "quiz"
    questions: list[QuestionIn] = Field(min_length=1, max_length=MAX_QUESTIONS)
    shuffle_questions: bool = False
    shuffle_options: bool = False
    attempts_allowed: int | None = Field(default=None, ge=1, le=100, description="null: unlimited")
    grading: Literal["highest", "last", "first", "average"] = "highest"
    time_limit_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)
    opens_at: Timestamp | None = None
    closes_at: Timestamp | None = None
    review: Literal["score", "answers", "after_close"] = "score"
    pass_mark: float | None = Field(default=None, ge=0, le=200_000)
    notice: QuizNoticeIn | None = Field(default=None, description="send it now to an audience")


class AnswersIn(Strict):
    answers: dict[str, Answer | None] = Field(
        default_factory=dict,
        max_length=MAX_QUESTIONS,
        description="{question id: answer}; a question given replaces its saved answer, null clears it",
    )


# --- responses ----------------------------------------------------------------------------------


class OptionOut(BaseModel):
    id: str
    text: str


class QuestionOut(BaseModel):
    id: str
    type: QuestionType
    text: str
    points: int
    options: list[OptionOut]
    partial: PartialMode | None = None
    answer: Answer | None = Field(default=None, description="the key: only in an owner's view")


class ResultOut(BaseModel):
    score: float
    max_score: float
    passed: bool | None = Field(description="score >= pass_mark (null: no pass mark)")
    attempts: int
    first_submitted_at: datetime
    seconds_taken: float | None
    final: bool = Field(description="it can no longer change")


class AttemptBrief(BaseModel):
    id: str
    n: int
    state: Literal["open", "submitted"]
    started_at: datetime
    deadline: datetime | None
    submitted_at: datetime | None
    auto_submitted: bool
    score: float | None = Field(description="as the review setting allows")


class Mine(BaseModel):
    attempts: list[AttemptBrief]
    attempts_left: int | None = Field(description="null: unlimited")
    result: ResultOut | None = Field(description="the graded result, as the review setting allows")


class QuizOut(BaseModel):
    id: str
    title: str
    kind: Literal["quiz", "exam"]
    view: Literal["owner", "reader", "member"]
    scope_unit_id: str | None
    question_count: int
    max_score: float
    shuffle_questions: bool
    shuffle_options: bool
    attempts_allowed: int | None
    grading: Literal["highest", "last", "first", "average"]
    time_limit_seconds: int | None
    opens_at: datetime | None
    closes_at: datetime | None
    review: Literal["score", "answers", "after_close"]
    pass_mark: float | None
    notice_id: str | None
    created_at: datetime
    updated_at: datetime
    questions: list[QuestionOut] | None = Field(
        description="owners and readers; members see them in an attempt"
    )
    mine: Mine | None = Field(description="a member's own attempts and result")


class ReviewItem(BaseModel):
    question_id: str
    points: float = Field(description="points earned")
    answer: Answer = Field(description="the right answer")


class AttemptOut(BaseModel):
    id: str
    quiz_id: str
    member_id: str
    n: int
    state: Literal["open", "submitted"]
    started_at: datetime
    deadline: datetime | None = Field(
        description="answers saved after it are refused; it submits itself then"
    )
    submitted_at: datetime | None
    auto_submitted: bool
    questions: list[QuestionOut] = Field(description="in this attempt's order (stable on reload)")
    answers: dict[str, Answer]
    max_score: float
    score: float | None = Field(description="as the review setting allows")
    review: list[ReviewItem] | None = Field(description="review 'answers' (or after close): per question")
    result: ResultOut | None = Field(description="the member's graded result, as the review setting allows")


# --- checks -------------------------------------------------------------------------------------


def _check_question(i: int, q: QuestionIn) -> list[tuple[str, str]]:
    at = f"questions[{i}]"
    errors: list[tuple[str, str]] = []
    ids = [o.id for o in q.options]
    for j, oid in enumerate(ids):
        if oid in ids[:j]:
            errors.append((f"{at}.options[{j}].id", "duplicate option id"))
    choice = q.type in ("single", "multiple")
    if choice and len(ids) < 2:
        errors.append((f"{at}.options", "a choice question needs at least 2 options"))
    if not choice and ids:
        errors.append((f"{at}.options", f"a {q.type} question has no options"))
    if q.partial is not None and q.type != "multiple":
        errors.append((f"{at}.partial", "only multiple choice has a partial mode"))
    a = q.answer
    if q.type == "single" and not (isinstance(a, str) and a in ids):
        errors.append((f"{at}.answer", "must be the id of one of its options"))
    elif q.type == "multiple":
        if not (isinstance(a, list) and a and all(x in ids for x in a)):
            errors.append((f"{at}.answer", "must list one or more of its option ids"))
        elif len(set(a)) != len(a):
            errors.append((f"{at}.answer", "an option is listed twice"))
    elif q.type == "true_false" and not isinstance(a, bool):
        errors.append((f"{at}.answer", "must be true or false"))
    elif q.type == "fill_in":
        if not (isinstance(a, list) and 1 <= len(a) <= MAX_ACCEPTED and all(scoring.normalise(x) for x in a)):
            errors.append((f"{at}.answer", f"must list 1 to {MAX_ACCEPTED} accepted answers, none empty"))
        elif any(len(x) > 1000 for x in a):
            errors.append((f"{at}.answer", "an accepted answer is longer than 1000 characters"))
    return errors


def check_quiz(body: QuizIn) -> None:
    """The rules across fields (422 naming each field as written)."""
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, q in enumerate(body.questions):
        if q.id in seen:
            errors.append((f"questions[{i}].id", "duplicate question id"))
        seen.add(q.id)
        errors += _check_question(i, q)
    if body.opens_at is not None and body.closes_at is not None and body.closes_at <= body.opens_at:
        errors.append(("closes_at", "must be after opens_at"))
    if body.review == "after_close" and body.closes_at is None:
        errors.append(("review", "after_close needs closes_at"))
    total = sum(q.points for q in body.questions)
    if body.pass_mark is not None and body.pass_mark > total:
        errors.append(("pass_mark", f"must not exceed the quiz's {total} points"))
    if errors:
        raise invalid_many(errors[:100])


def check_answers(questions: list[dict[str, Any]], answers: dict[str, Any]) -> None:
    """Every answer names a question of the quiz and fits it (422 ``answers.<id>``)."""
    by_id = {q["id"]: q for q in questions}
    errors: list[tuple[str, str]] = []
    for qid, value in answers.items():
        q = by_id.get(qid)
        why = "unknown question" if q is None else scoring.check_answer(q, value)
        if why is not None:
            errors.append((f"answers.{qid}", why))
    if errors:
        raise invalid_many(errors[:100])


# --- views --------------------------------------------------------------------------------------


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


def _mine(quiz: Record, attempts: list[Record], result: Record | None, now: datetime) -> dict[str, Any]:
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


# --- loading as the caller ----------------------------------------------------------------------


async def owns(conn: Connection, p: Principal, quiz: Record) -> bool:
    """An admin, or a unit-bound key whose subtree holds the quiz's creating unit."""
    if p.is_admin:
        return True
    root = p.scope_root
    scope = quiz["scope_unit_id"]
    return root is not None and scope is not None and await units.is_within(conn, scope, root)


async def load_quiz(conn: Connection, p: Principal, quiz_id: str) -> tuple[Record, str]:
    """The quiz and how this caller sees it (owner, reader, member), else 404."""
    qid = parse_uuid(quiz_id)
    if qid is None:
        raise not_found("quiz")
    if p.role == "member":
        assert p.member_id is not None
        row = await quizzes.for_member(conn, qid, p.member_id)
        if row is None:
            raise not_found("quiz")
        return row, "member"
    row = await quizzes.get(conn, qid)
    if row is None:
        raise not_found("quiz")
    if await owns(conn, p, row):
        return row, "owner"
    root = p.scope_root
    if root is not None and row["notice_id"] is not None:
        if await visible_notice(conn, str(row["notice_id"]), root) is not None:
            return row, "reader"
    raise not_found("quiz")


async def _member_quiz(conn: Connection, request: web.Request) -> tuple[Principal, Record, str]:
    """The quiz a member is taking, with its overdue attempts settled first; a key that may see
    the quiz but not take it: 403 (one that may not see it: 404)."""
    p = principal(request)
    quiz, view = await load_quiz(conn, p, request.match_info["quiz_id"])
    if view != "member":
        raise Problem(403, "Forbidden", "only the members it went out to take a quiz", type_="forbidden")
    assert p.member_id is not None
    qid = str(quiz["id"])
    await quizzes.lock_member(conn, qid, p.member_id)
    await engine.settle(conn, quiz_id=qid, member_id=p.member_id)
    return p, quiz, p.member_id


async def _own_attempt(conn: Connection, quiz: Record, member_id: str, attempt_id: str) -> Record:
    aid = parse_uuid(attempt_id)
    row = None if aid is None else await quizzes.attempt(conn, str(quiz["id"]), aid)
    if row is None or row["member_id"] != member_id:
        raise not_found("attempt")
    return row


def _submitted(a: Record) -> Problem:
    how = "at its deadline" if a["auto_submitted"] else "already"
    return Problem(
        409,
        "Conflict",
        f"this attempt was submitted {how} ({a['submitted_at'].isoformat()}); answers are no longer taken",
        type_="attempt-submitted",
        errors=[{"field": "answers", "message": "the attempt is submitted"}],
    )


# --- handlers -----------------------------------------------------------------------------------


async def create_quiz_row(conn: Connection, p: Principal, body: QuizIn, notice_id: str | None) -> Record:
    """Store a checked QuizIn as the caller (its unit scopes the quiz)."""
    questions = [q.model_dump(mode="json", exclude_none=True) for q in body.questions]
    return await quizzes.insert(
        conn,
        scope_unit_id=p.scope_root,
        created_by=p.key_id,
        title=body.title,
        kind=body.kind,
        questions=questions,
        max_score=scoring.max_score(questions),
        shuffle_questions=body.shuffle_questions,
        shuffle_options=body.shuffle_options,
        attempts_allowed=body.attempts_allowed,
        grading=body.grading,
        time_limit_seconds=body.time_limit_seconds,
        opens_at=body.opens_at,
        closes_at=body.closes_at,
        review=body.review,
        pass_mark=None if body.pass_mark is None else Decimal(str(body.pass_mark)),
        notice_id=notice_id,
    )


@routes.route(
    "POST",
    "/v1/quizzes",
    summary="Create a quiz (with its answer key), optionally sending it as a notice",
    tag="quizzes",
    body=QuizIn,
    response=QuizOut,
    status=201,
    headers={IDEMPOTENCY_HEADER: "Replays the first response for the same key and body (24 h)"},
    responses={
        409: "a request with this Idempotency-Key is still being processed",
        422: "a question's options, answer or partial mode do not fit its type; ids repeat; closes_at "
        "is not after opens_at; review after_close without closes_at; pass_mark above the points; the "
        "notice's audience, channels or escalation are unknown or out of reach; the Idempotency-Key "
        "was used with a different body",
    },
    links={"get_quiz": {"quiz_id": "$response.body#/id"}},
)
async def create_quiz(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    body = call.body_as(QuizIn)
    check_quiz(body)
    deps = request.app[DEPS]
    notice_in = None
    if body.notice is not None:
        require_channels(deps, body.notice.channels)
        kind: Literal["notice", "exam"] = "exam" if body.kind == "exam" else "notice"
        notice_in = NoticeIn.model_validate(
            {"kind": "notice", "title": body.title, **body.notice.model_dump(exclude_none=True)}
        )
    key = idempotency_key(request)
    notice: dict[str, Any] | None = None

    async def create() -> dict[str, Any]:
        nonlocal notice
        if notice_in is not None:
            notice = await insert_notice(conn, deps, p, notice_in, kind=kind)
        row = await create_quiz_row(conn, p, body, notice["id"] if notice else None)
        return quiz_view(row, "owner")

    async with deps.pool.acquire() as conn, conn.transaction():
        data, replayed = await create_once(
            conn, deps, p, key, request_digest(body), create, notice_of=lambda d: d["notice_id"]
        )
        if replayed:
            return json_response(data, status=201, headers={"Idempotent-Replayed": "true"})
        await audit.record(
            conn,
            request,
            "quiz.create",
            "quiz",
            data["id"],
            [p.scope_root, *(body.notice.audience.units if body.notice else [])],
            {"kind": body.kind, "questions": len(body.questions), "notice_id": data["notice_id"]},
        )
    if notice is not None:
        await wake_fanout(deps, notice, body.notice.send_at if body.notice else None)
    return json_response(data, status=201, headers={"Location": f"/v1/quizzes/{data['id']}"})


@routes.route(
    "GET",
    "/v1/quizzes/{quiz_id}",
    summary="A quiz: whole with its key (owners), without the key (readers), or a member's view",
    tag="quizzes",
    response=QuizOut,
)
async def get_quiz(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        quiz, view = await load_quiz(conn, p, request.match_info["quiz_id"])
        mine = None
        if view == "member":
            assert p.member_id is not None
            qid = str(quiz["id"])
            await quizzes.lock_member(conn, qid, p.member_id)
            await engine.settle(conn, quiz_id=qid, member_id=p.member_id)
            now = await receipts.now(conn)
            mine = _mine(
                quiz,
                await quizzes.attempts_of(conn, qid, p.member_id),
                await quizzes.result(conn, qid, p.member_id),
                now,
            )
    return json_response(quiz_view(quiz, view, mine=mine))


def _closed(what: str, detail: str) -> Problem:
    return Problem(409, "Conflict", detail, type_=what, errors=[{"field": "quiz_id", "message": detail}])


@routes.route(
    "POST",
    "/v1/quizzes/{quiz_id}/attempts",
    summary="Start an attempt (or resume the open one): the questions in its own, stable order",
    tag="quizzes",
    response=AttemptOut,
    status=201,
    responses={
        200: Reply("the open attempt, resumed"),
        409: "the quiz is not open yet, or closed; no attempts left",
    },
    links={
        "save_answers": {"quiz_id": "$request.path.quiz_id", "attempt_id": "$response.body#/id"},
        "submit_attempt": {"quiz_id": "$request.path.quiz_id", "attempt_id": "$response.body#/id"},
    },
)
async def start_attempt(request: web.Request, call: Call) -> web.Response:
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        _, quiz, member = await _member_quiz(conn, request)
        qid = str(quiz["id"])
        now = await receipts.now(conn)
        attempts = await quizzes.attempts_of(conn, qid, member)
        open_ = [a for a in attempts if a["submitted_at"] is None]
        if open_:
            a, status = open_[0], 200
        else:
            if quiz["opens_at"] is not None and now < quiz["opens_at"]:
                raise _closed("quiz-not-open", f"the quiz opens at {quiz['opens_at'].isoformat()}")
            if quiz["closes_at"] is not None and now >= quiz["closes_at"]:
                raise _closed("quiz-closed", f"the quiz closed at {quiz['closes_at'].isoformat()}")
            allowed = quiz["attempts_allowed"]
            if allowed is not None and len(attempts) >= allowed:
                raise _closed("no-attempts-left", f"all {allowed} attempts are used")
            a, status = await quizzes.start(conn, qid, member, secrets.randbits(62)), 201
        result = await quizzes.result(conn, qid, member)
    return json_response(attempt_view(quiz, a, result, now, owner=False), status=status)


@routes.route(
    "GET",
    "/v1/quizzes/{quiz_id}/attempts/{attempt_id}",
    summary="An attempt: its member's, or any (owners)",
    tag="quizzes",
    response=AttemptOut,
)
async def get_attempt(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        quiz, view = await load_quiz(conn, p, request.match_info["quiz_id"])
        if view == "reader":
            raise not_found("attempt")
        aid = parse_uuid(request.match_info["attempt_id"])
        a = None if aid is None else await quizzes.attempt(conn, str(quiz["id"]), aid)
        if a is None or (view == "member" and a["member_id"] != p.member_id):
            raise not_found("attempt")
        qid, member = str(quiz["id"]), a["member_id"]
        await quizzes.lock_member(conn, qid, member)
        if await engine.settle(conn, quiz_id=qid, member_id=member):
            a = await quizzes.attempt(conn, qid, str(a["id"]))
            assert a is not None
        now = await receipts.now(conn)
        result = await quizzes.result(conn, qid, member)
    return json_response(attempt_view(quiz, a, result, now, owner=view == "owner"))


@routes.route(
    "PUT",
    "/v1/quizzes/{quiz_id}/attempts/{attempt_id}/answers",
    summary="Save answers of an open attempt (progress; nothing is scored)",
    tag="quizzes",
    body=AnswersIn,
    response=AttemptOut,
    responses={
        409: "the attempt is submitted (by the member, or at its deadline): answers are refused",
        422: "an answer names a question the quiz does not have, or does not fit its question "
        "(an unknown option, a text for a choice)",
    },
)
async def save_answers(request: web.Request, call: Call) -> web.Response:
    body = call.body_as(AnswersIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        _, quiz, member = await _member_quiz(conn, request)
        a = await _own_attempt(conn, quiz, member, request.match_info["attempt_id"])
        check_answers(quiz["questions"], body.answers)
        if a["submitted_at"] is not None:
            raise _submitted(a)
        saved = await quizzes.save(conn, str(a["id"]), body.answers)
        assert saved is not None  # settled and locked: open and before its deadline
        now = await receipts.now(conn)
    return json_response(attempt_view(quiz, saved, None, now, owner=False))


@routes.route(
    "POST",
    "/v1/quizzes/{quiz_id}/attempts/{attempt_id}/submit",
    summary="Submit an attempt (with last answers, optionally): scored at once",
    tag="quizzes",
    body=AnswersIn,
    response=AttemptOut,
    responses={
        409: "the attempt was submitted already (or at its deadline) and this call brings answers",
        422: "an answer names a question the quiz does not have, or does not fit its question",
    },
)
async def submit_attempt(request: web.Request, call: Call) -> web.Response:
    body = call.body_as(AnswersIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        _, quiz, member = await _member_quiz(conn, request)
        a = await _own_attempt(conn, quiz, member, request.match_info["attempt_id"])
        check_answers(quiz["questions"], body.answers)
        qid = str(quiz["id"])
        if a["submitted_at"] is not None:
            if body.answers:
                raise _submitted(a)
        else:  # a retried submit without answers answers as the first did
            answers = {k: v for k, v in {**a["answers"], **body.answers}.items() if v is not None}
            now = await receipts.now(conn)
            await engine.submit(
                conn, [engine.scored(str(a["id"]), quiz["questions"], answers, now, auto=False)]
            )
            fresh = await quizzes.attempt(conn, qid, str(a["id"]))
            assert fresh is not None
            a = fresh
        now = await receipts.now(conn)
        result = await quizzes.result(conn, qid, member)
    return json_response(attempt_view(quiz, a, result, now, owner=False))
