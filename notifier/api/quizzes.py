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
``answers``). Bodies and answers: api/quiz_models.py; the views: api/quiz_views.py; scoring
rules: domain/scoring.py; deadlines and what a submission entails (the notice's read receipt,
points): workers/quizzes.py.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

from aiohttp import web

from notifier.api import audit
from notifier.api.keys import DEPS, principal
from notifier.api.notices import (
    IDEMPOTENCY_HEADER,
    NoticeIn,
    create_once,
    idempotency_key,
    insert_notice,
    request_digest,
    require_channels,
    wake_fanout,
)
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, not_found
from notifier.api.quiz_models import (
    AnswersIn,
    AttemptOut,
    QuizIn,
    QuizOut,
    check_answers,
    check_quiz,
)
from notifier.api.quiz_views import attempt_view, mine_view, quiz_view
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.types import parse_uuid
from notifier.db import quizzes, receipts, units
from notifier.db.pool import Connection, Record
from notifier.db.visibility import visible_notice
from notifier.domain import scoring
from notifier.workers import quizzes as engine

routes = Router()
# The bodies and views are re-exported ("X as X" above): the exam slice and the pages import them
# from here, with the handlers.


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
    await engine.settle_member(conn, str(quiz["id"]), p.member_id)
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
        422: "kind is exam (a monthly test is made with POST /v1/exams); a question's options, answer "
        "or partial mode do not fit its type; ids repeat; closes_at is not after opens_at; review "
        "after_close without closes_at; pass_mark above the points; the notice's audience, channels "
        "or escalation are unknown or out of reach; the Idempotency-Key was used with a different body",
    },
    links={"get_quiz": {"quiz_id": "$response.body#/id"}},
)
async def create_quiz(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    body = call.body_as(QuizIn)
    if body.kind == "exam":
        # An exam is a quiz with its test (window, one attempt, reminders, ranking: the exams
        # row) and a notice of kind exam; made here it would have none of them.
        raise invalid("kind", "a monthly test (kind exam) is created with POST /v1/exams")
    check_quiz(body)
    deps = request.app[DEPS]
    notice_in = None
    if body.notice is not None:
        require_channels(deps, body.notice.channels)
        notice_in = NoticeIn.model_validate(
            {"kind": "notice", "title": body.title, **body.notice.model_dump(exclude_none=True)}
        )
    key = idempotency_key(request)
    notice: dict[str, Any] | None = None

    async def create() -> dict[str, Any]:
        nonlocal notice
        if notice_in is not None:
            notice = await insert_notice(conn, deps, p, notice_in)
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
            await engine.settle_member(conn, qid, p.member_id)
            now = await receipts.now(conn)
            mine = mine_view(
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
        if await engine.settle_member(conn, qid, member):
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
