"""POST /v1/exams: a monthly test (微考核) -- a quiz of kind ``exam`` with a window and one attempt,
sent as a notice of kind ``exam``, with reminders to those who have not taken it.

The reminders are the notice's escalation policy, built here: one step per ``remind_before``
(e.g. ``P3D``: three days before the close) reminding the unread on ``remind_channels``. A
submitted attempt is the notice's read receipt (api/quizzes.py), so a member who has taken the
test is never reminded; the notice expires at the close, which stops the reminders. After the
close the results are frozen (schemas/0024 guards it; the quiz API answers 409) and the ranking
(api/rankings.py) is final.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.cursors import decode_time_cursor, encode_time_cursor
from notifier.api.keys import DEPS, principal
from notifier.api.notices import (
    IDEMPOTENCY_HEADER,
    Audience,
    NoticeIn,
    NoticeOut,
    create_once,
    idempotency_key,
    insert_notice,
    request_digest,
    require_channels,
    wake_fanout,
)
from notifier.api.problems import Problem, invalid, invalid_many, not_found
from notifier.api.quiz_models import QuestionIn, QuizIn, QuizOut, check_quiz
from notifier.api.quiz_views import quiz_view
from notifier.api.quizzes import create_quiz_row
from notifier.api.rankings import load_rankable, staff_slice
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Channels, Strict, Timestamp, parse_uuid
from notifier.db import exams
from notifier.db.pool import Connection
from notifier.db.rankings import recipients_within
from notifier.domain.escalation import PolicyRules, Seconds, Step, format_duration

routes = Router()

MAX_AHEAD = 30 * 86400  # the escalation engine schedules a step at most 30 days after the send


class ExamIn(Strict):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000, description="the notice's text")
    questions: list[QuestionIn] = Field(min_length=1, max_length=200)
    audience: Audience
    channels: Channels = Field(default_factory=lambda: ["inapp"], min_length=1, max_length=16)
    opens_at: Timestamp | None = Field(default=None, description="default: when the notice goes out")
    closes_at: Timestamp = Field(description="after this nothing is taken and the results are final")
    send_at: Timestamp | None = Field(default=None, description="the notice goes out then (default: now)")
    time_limit_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)
    shuffle_questions: bool = True
    shuffle_options: bool = True
    review: Literal["score", "answers", "after_close"] = "after_close"
    pass_mark: float | None = Field(default=None, ge=0, le=200_000, description="in points")
    tie_break: Literal["none", "time"] = Field(
        default="none", description="time: of equal scores, less time taken ranks higher"
    )
    remind_before: list[Seconds] = Field(
        default_factory=lambda: [3 * 86400.0],
        max_length=5,
        description="remind those who have not taken it this long before the close (ISO 8601, e.g. P3D)",
    )
    remind_channels: Channels | None = Field(
        default=None, max_length=8, description="channels for the reminders (default: channels)"
    )


class ExamOut(BaseModel):
    quiz: QuizOut
    notice: NoticeOut
    tie_break: Literal["none", "time"]
    reminders_at: list[datetime] = Field(description="when the reminders are due")


def _quiz_in(body: ExamIn) -> QuizIn:
    fields = {"title", "questions", "shuffle_questions", "shuffle_options", "time_limit_seconds"}
    fields |= {"opens_at", "closes_at", "review", "pass_mark"}
    data = body.model_dump(mode="json", include=fields)
    return QuizIn.model_validate(data | {"kind": "exam", "attempts_allowed": 1, "grading": "first"})


def reminder_steps(body: ExamIn, start: datetime) -> tuple[PolicyRules | None, list[datetime]]:
    """The escalation steps for the reminders, counted from ``start`` (when the notice goes out),
    and when each is due; 422 naming ``remind_before[i]`` when one falls outside the window."""
    errors: list[tuple[str, str]] = []
    due: list[tuple[float, datetime]] = []
    for i, before in enumerate(body.remind_before):
        at = body.closes_at - timedelta(seconds=before)
        after = (at - start).total_seconds()
        if after <= 0:
            errors.append((f"remind_before[{i}]", "falls before the test goes out"))
        elif after > MAX_AHEAD:
            errors.append(
                (f"remind_before[{i}]", f"more than {format_duration(MAX_AHEAD)} after the test goes out")
            )
        else:
            due.append((after, at))
    if len({a for a, _ in due}) != len(due):
        errors.append(("remind_before", "must not repeat"))
    if errors:
        raise invalid_many(errors)
    if not due:
        return None, []
    due.sort()
    channels = body.remind_channels or body.channels
    steps = [Step(after=after, remind=list(channels)) for after, _ in due]
    return PolicyRules(steps=steps), [at for _, at in due]


async def _start(conn: Connection, body: ExamIn) -> datetime:
    now: datetime = await conn.fetchval("SELECT notifier_now()")
    return max(now, body.send_at) if body.send_at else now


@routes.route(
    "POST",
    "/v1/exams",
    summary="Create a monthly test and send it as a notice, with reminders before it closes",
    tag="quizzes",
    body=ExamIn,
    response=ExamOut,
    status=201,
    headers={IDEMPOTENCY_HEADER: "Replays the first response for the same key and body (24 h)"},
    responses={
        409: "a request with this Idempotency-Key is still being processed",
        422: "a question's options, answer or partial mode do not fit its type; ids repeat; the window "
        "is empty or already over; a reminder falls outside it; pass_mark above the points; the "
        "audience, channels or reminder channels are unknown or out of reach; the Idempotency-Key was "
        "used with a different body",
    },
)
async def create_exam(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    body = call.body_as(ExamIn)
    quiz_in = _quiz_in(body)
    check_quiz(quiz_in)
    deps = request.app[DEPS]
    require_channels(deps, body.channels)
    for i, channel in enumerate(body.remind_channels or []):
        if channel not in deps.channels:
            raise invalid(f"remind_channels[{i}]", "unknown channel")
    key = idempotency_key(request)
    notice: dict[str, Any] = {}

    async def create() -> dict[str, Any]:
        start = await _start(conn, body)
        if body.closes_at <= start:
            raise invalid("closes_at", "must be after the test goes out")
        rules, reminders_at = reminder_steps(body, start)
        notice_in = NoticeIn(
            kind="notice",
            title=body.title,
            body=body.body,
            audience=body.audience,
            channels=body.channels,
            escalation=rules,
            send_at=body.send_at,
            expires_at=body.closes_at,
        )
        notice.update(await insert_notice(conn, deps, p, notice_in, kind="exam"))
        row = await create_quiz_row(conn, p, quiz_in, notice["id"])
        await exams.insert(conn, str(row["id"]), notice["id"], body.tie_break, body.remind_before)
        out = {"quiz": quiz_view(row, "owner"), "notice": notice, "tie_break": body.tie_break}
        return ExamOut.model_validate(out | {"reminders_at": reminders_at}).model_dump(mode="json")

    async with deps.pool.acquire() as conn, conn.transaction():
        data, replayed = await create_once(
            conn, deps, p, key, request_digest(body), create, notice_of=lambda d: d["notice"]["id"]
        )
        if replayed:
            return json_response(data, status=201, headers={"Idempotent-Replayed": "true"})
        await audit.record(
            conn,
            request,
            "exam.create",
            "quiz",
            data["quiz"]["id"],
            [p.scope_root, *body.audience.units],
            {"questions": len(body.questions), "notice_id": data["notice"]["id"]},
        )
    if notice:
        await wake_fanout(deps, notice, body.send_at)
    return json_response(data, status=201, headers={"Location": f"/v1/quizzes/{data['quiz']['id']}"})


class ExamQuery(Strict):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


class ExamBrief(BaseModel):
    quiz_id: str
    notice_id: str
    title: str
    opens_at: datetime | None
    closes_at: datetime
    closed: bool
    max_score: float
    pass_mark: float | None
    tie_break: Literal["none", "time"]
    recipients: int = Field(description="every recipient of the notice (not only your slice)")
    taken: int
    created_at: datetime


class ExamPage(BaseModel):
    items: list[ExamBrief]
    next_cursor: str | None


@routes.route(
    "GET",
    "/v1/exams",
    summary="The monthly tests your units were sent or sent, newest first",
    tag="quizzes",
    query=ExamQuery,
    response=ExamPage,
    responses={422: "cursor is not a next_cursor this API returned"},
)
async def list_exams(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(ExamQuery)
    after = decode_time_cursor(q.cursor, parse_uuid)
    async with request.app[DEPS].pool.acquire() as conn:
        rows = await exams.list_exams(conn, p.scope_root, q.limit + 1, after)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = [
        {
            **{k: v for k, v in dict(r).items() if k != "id"},
            "quiz_id": str(r["id"]),
            "notice_id": str(r["notice_id"]),
        }
        for r in rows
    ]
    next_cursor = encode_time_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    body = ExamPage.model_validate({"items": items, "next_cursor": next_cursor})
    return json_response(body.model_dump(mode="json"))


class ExcuseIn(Strict):
    reason: str = Field(min_length=1, max_length=500, description="e.g. 病假 (sick leave)")


class ExcusedOut(BaseModel):
    quiz_id: str
    member_id: str
    reason: str


async def _excusable(conn: Connection, request: web.Request) -> tuple[str, str]:
    """(test, member) a staff caller may excuse: a test whose notice it sees, not yet closed, and a
    recipient of it inside the caller's slice; else 404 (409 once closed)."""
    p = principal(request)
    p.require("admin", "service", "secretary")
    quiz = await load_rankable(conn, request.match_info["quiz_id"])
    if quiz["kind"] != "exam" or quiz["notice_id"] is None:
        raise not_found("quiz")
    roots = await staff_slice(conn, p, quiz, None)
    member_id = request.match_info["member_id"]
    if member_id not in await recipients_within(conn, str(quiz["notice_id"]), [member_id], roots):
        raise not_found("member")
    if quiz["closed"]:
        raise Problem(409, "Conflict", "the test has closed: who was expected to take it is final")
    return str(quiz["id"]), member_id


@routes.route(
    "PUT",
    "/v1/quizzes/{quiz_id}/excused/{member_id}",
    summary="Excuse a member from a test (leave): not expected, in no denominator",
    tag="quizzes",
    body=ExcuseIn,
    response=ExcusedOut,
    responses={409: "the test has closed"},
)
async def excuse_member(request: web.Request, call: Call) -> web.Response:
    body = call.body_as(ExcuseIn)
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        quiz_id, member_id = await _excusable(conn, request)
        await exams.excuse(conn, quiz_id, member_id, body.reason)
        await audit.record(
            conn,
            request,
            "exam.excuse",
            "quiz",
            quiz_id,
            await audit.member_units(conn, member_id),
            {"member_id": member_id},
        )
    return json_response({"quiz_id": quiz_id, "member_id": member_id, "reason": body.reason})


@routes.route(
    "DELETE",
    "/v1/quizzes/{quiz_id}/excused/{member_id}",
    summary="Withdraw a member's excuse from a test",
    tag="quizzes",
    status=204,
    responses={409: "the test has closed"},
)
async def unexcuse_member(request: web.Request, call: Call) -> web.Response:
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        quiz_id, member_id = await _excusable(conn, request)
        await exams.excuse(conn, quiz_id, member_id, None)
        await audit.record(
            conn,
            request,
            "exam.unexcuse",
            "quiz",
            quiz_id,
            await audit.member_units(conn, member_id),
            {"member_id": member_id},
        )
    return web.Response(status=204)
