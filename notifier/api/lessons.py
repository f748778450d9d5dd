"""/v1/units/{unit_id}/lessons: the daily lesson (党建每日一学) of a unit, one per local date.

The scheduler (``notifier.workers.lessons``) sends a unit's lesson to its whole subtree at the
unit's local lesson time on that date. Each lesson shows when it goes (``send_at``) and whether it
went: ``sent`` with the notice and the time, ``missed`` when its day ended unsent (past days are
never sent late), else ``scheduled``. Editing a sent lesson changes the stored lesson, not the
notice that went out; a sent lesson cannot be deleted (it is the record of what went out).

Admins and service keys write; secretaries read; everything is scoped to the caller's subtree.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema, field_validator

from notifier.api import audit
from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, not_found
from notifier.api.quizzes import owns
from notifier.api.routing import Call, Reply, Router, json_response
from notifier.api.types import Strict
from notifier.db import lessons, quizzes
from notifier.db.pool import Connection

routes = Router()

MAX_QUIZ_BYTES = 64 * 1024
MAX_PAGE = 400
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(value: Any) -> dt.date:
    """A calendar date written YYYY-MM-DD (a ``date`` passes through)."""
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DAY_RE.match(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError("must be a date YYYY-MM-DD such as 2024-07-01")


Day = Annotated[
    dt.date,
    BeforeValidator(parse_day),
    WithJsonSchema({"type": "string", "format": "date", "examples": ["2024-07-01"]}),
]


class LessonIn(Strict):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000, description="the lesson; under five minutes to read")
    quiz: dict[str, Any] | None = Field(
        default=None,
        description=f"deprecated (use quiz_id): kept as given, at most {MAX_QUIZ_BYTES // 1024} KiB of JSON",
    )
    quiz_id: UUID | None = Field(
        default=None,
        description="a quiz of yours (POST /v1/quizzes, without a notice) that goes out with the lesson: "
        "its members take it, and the submitted attempt is their read receipt",
    )

    @field_validator("quiz")
    @classmethod
    def _quiz_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
            if size > MAX_QUIZ_BYTES:
                raise ValueError(f"at most {MAX_QUIZ_BYTES} bytes of JSON")
        return value


class LessonOut(BaseModel):
    unit_id: str
    date: Day
    title: str
    body: str
    quiz: dict[str, Any] | None
    quiz_id: str | None
    send_at: dt.datetime = Field(description="the unit's local lesson time on that date")
    state: Literal["scheduled", "sent", "missed"] = Field(
        description="missed: the day ended before it was sent (past days are never sent late)"
    )
    notice_id: str | None = Field(description="the lesson notice, once sent")
    sent_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class LessonList(BaseModel):
    items: list[LessonOut]
    next_cursor: str | None


class LessonQuery(Strict):
    from_: Day | None = Field(default=None, alias="from", description="first date (inclusive)")
    to: Day | None = Field(default=None, description="last date (inclusive)")
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    cursor: Day | None = Field(default=None, description="next_cursor of the previous page")


def _path(request: web.Request) -> tuple[str, dt.date]:
    try:
        day = parse_day(request.match_info["date"])
    except ValueError as exc:
        raise invalid("date", str(exc)) from None
    return request.match_info["unit_id"], day


async def _check_quiz(conn: Connection, p: Principal, quiz_id: str, *, kept: bool) -> None:
    """The lesson's quiz is the caller's (it owns the quiz) and has not gone out with another
    notice (``kept``: the lesson had it already, and may have taken it out)."""
    quiz = await quizzes.get(conn, quiz_id)
    if quiz is None or not await owns(conn, p, quiz):
        raise invalid("quiz_id", "unknown quiz")
    if quiz["notice_id"] is not None and not kept:
        raise invalid("quiz_id", f"this quiz went out already, with notice {quiz['notice_id']}")


def _out(row: Any) -> dict[str, Any]:
    return LessonOut.model_validate(lessons.as_dict(row)).model_dump(mode="json")


@routes.route(
    "PUT",
    "/v1/units/{unit_id}/lessons/{date}",
    summary="Create or replace the unit's lesson for a local date",
    tag="lessons",
    body=LessonIn,
    response=LessonOut,
    status=201,
    responses={
        200: Reply("replaced"),
        409: "this lesson was already sent",
        422: "quiz_id names no quiz of yours, or one already sent",
    },
    links={
        "get_lesson": {"unit_id": "$request.path.unit_id", "date": "$request.path.date"},
        "delete_lesson": {"unit_id": "$request.path.unit_id", "date": "$request.path.date"},
    },
)
async def put_lesson(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(LessonIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        await require_unit(conn, p, request.match_info["unit_id"])
        unit_id, day = _path(request)
        quiz_id = None if body.quiz_id is None else str(body.quiz_id)
        if quiz_id is not None:
            current = await lessons.get(conn, unit_id, day)
            await _check_quiz(
                conn, p, quiz_id, kept=current is not None and current["quiz_id"] == body.quiz_id
            )
        created = await lessons.upsert(conn, unit_id, day, body.title, body.body, body.quiz, quiz_id)
        row = await lessons.get(conn, unit_id, day)
        await audit.record(
            conn,
            request,
            "lesson.create" if created else "lesson.update",
            "lesson",
            f"{unit_id}/{day.isoformat()}",
            [unit_id],
            {"day": day.isoformat(), "quiz": body.quiz is not None, "quiz_id": quiz_id},
        )
    assert row is not None
    return json_response(_out(row), status=201 if created else 200)


@routes.route(
    "GET",
    "/v1/units/{unit_id}/lessons/{date}",
    summary="The unit's lesson for a date, and whether it was sent",
    tag="lessons",
    response=LessonOut,
)
async def get_lesson(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        await require_unit(conn, p, request.match_info["unit_id"])
        unit_id, day = _path(request)
        row = await lessons.get(conn, unit_id, day)
    if row is None:
        raise not_found("lesson")
    return json_response(_out(row))


@routes.route(
    "GET",
    "/v1/units/{unit_id}/lessons",
    summary="The unit's lessons by date",
    tag="lessons",
    query=LessonQuery,
    response=LessonList,
    responses={422: "to is before from"},
)
async def list_lessons(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(LessonQuery)
    if q.from_ is not None and q.to is not None and q.to < q.from_:
        raise invalid("query.to", "must not be before from")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        unit = await require_unit(conn, p, request.match_info["unit_id"])
        rows = await lessons.list_for_unit(
            conn, unit["id"], start=q.from_, end=q.to, after=q.cursor, limit=q.limit + 1
        )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return json_response(
        {
            "items": [_out(r) for r in rows],
            "next_cursor": rows[-1]["day"].isoformat() if more else None,
        }
    )


@routes.route(
    "DELETE",
    "/v1/units/{unit_id}/lessons/{date}",
    summary="Delete a lesson that has not been sent",
    tag="lessons",
    status=204,
    responses={409: "this lesson was sent; it stays as the record of what went out"},
)
async def delete_lesson(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        await require_unit(conn, p, request.match_info["unit_id"])
        unit_id, day = _path(request)
        if not await lessons.lock(conn, unit_id, day):
            raise not_found("lesson")
        run = await lessons.run_of(conn, unit_id, day)
        if run is not None:
            raise Problem(
                409,
                "Conflict",
                f"this lesson was sent at {run['sent_at'].isoformat()} as notice {run['notice_id']}; "
                "it stays as the record of what went out",
                type_="lesson-sent",
                errors=[{"field": "date", "message": "already sent"}],
            )
        await lessons.delete(conn, unit_id, day)
        await audit.record(
            conn,
            request,
            "lesson.delete",
            "lesson",
            f"{unit_id}/{day.isoformat()}",
            [unit_id],
            {"day": day.isoformat()},
        )
    return web.Response(status=204)
