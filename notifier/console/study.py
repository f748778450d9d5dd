"""Study pages: the console's monthly tests (list, create, results and rankings per member and per
branch, the CSV for appraisal) and the member's quiz pages (take a quiz or a test, save progress,
submit, the score at once).

Every figure and every change goes through the API's own handlers as the session's principal
(apicall.py): a secretary's page shows what a secretary key sees, a member's page what a member
key sees -- so the answer key, which no member view of the API carries, is never in a member's
page either.

Questions are typed in the console as plain text, one block per question (blank line between):
the first line is the question; ``- text`` is an option, ``* text`` a right option (one: single
choice; several: multiple choice, a missing right option earning half); without options, ``= 对``
or ``= 错`` makes a true/false question and ``= a | b`` a fill-in accepting a or b.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from multidict import MultiDictProxy, MultiMapping
from pydantic import ValidationError

from notifier.api import exams as exams_api
from notifier.api import lessons as lessons_api
from notifier.api import notices as notices_api
from notifier.api import quiz_models
from notifier.api import quizzes as quizzes_api
from notifier.api import rankings as rankings_api
from notifier.api import rollcall as rollcall_api
from notifier.api.keys import DEPS
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid
from notifier.api.routing import Call
from notifier.console.apicall import as_principal, call
from notifier.console.pages import TZ, page, render, t
from notifier.console.session import Session
from notifier.console.units import tree_order
from notifier.db import units
from notifier.db.quiet import DEFAULT_TIMEZONE

PICKER_LIMIT = 500
TRUE = ("对", "是", "true", "yes", "√")
FALSE = ("错", "否", "false", "no", "×")


class QuestionsError(ValueError):
    def __init__(self, block: int) -> None:
        super().__init__(block)
        self.block = block


def parse_questions(text: str, points: int) -> list[dict[str, Any]]:
    """The question blocks typed in the console (module docstring) as the API's questions."""
    blocks = [b for b in "\n".join(line.strip() for line in text.splitlines()).split("\n\n") if b.strip()]
    out: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        lines = [line for line in block.splitlines() if line]
        head, rest = lines[0], lines[1:]
        options = [line for line in rest if line[:1] in ("-", "*")]
        keys = [line[1:].strip() for line in rest if line.startswith("=")]
        q: dict[str, Any] = {"id": f"q{i + 1}", "text": head, "points": points}
        if options and not keys:
            ids = [chr(ord("a") + j) for j in range(len(options))]
            q["options"] = [{"id": o, "text": line[1:].strip()} for o, line in zip(ids, options, strict=True)]
            right = [o for o, line in zip(ids, options, strict=True) if line.startswith("*")]
            if len(right) == 1:
                q |= {"type": "single", "answer": right[0]}
            else:
                q |= {"type": "multiple", "answer": right, "partial": "half_if_missing"}
        elif len(keys) == 1 and not options and keys[0].lower() in TRUE + FALSE:
            q |= {"type": "true_false", "answer": keys[0].lower() in TRUE}
        elif len(keys) == 1 and not options:
            q |= {"type": "fill_in", "answer": [a.strip() for a in keys[0].split("|") if a.strip()]}
        else:
            raise QuestionsError(i + 1)
        out.append(q)
    return out


async def _unit_choices(request: web.Request, p: Principal) -> list[dict[str, Any]]:
    async with request.app[DEPS].pool.acquire() as conn:
        rows = await units.list_units(conn, p.scope_root, None, PICKER_LIMIT)
    return [
        {"id": u["id"], "name": u["name"], "depth": depth}
        for depth, u in tree_order([dict(r) for r in rows], p.scope_root)
    ]


def _local(request: web.Request, value: str) -> str | None:
    """A datetime-local field, in the unit's time zone, as the API's ISO 8601 text."""
    if not value:
        return None
    local = datetime.fromisoformat(value).replace(tzinfo=ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE)))
    return local.isoformat()


def _values(form: MultiDictProxy[Any] | MultiMapping[str]) -> dict[str, Any]:
    def text(name: str) -> str:
        value = form.get(name, "")
        return value.strip() if isinstance(value, str) else ""

    return {
        "title": text("title"),
        "body": text("body"),
        "questions": text("questions"),
        "points": text("points") or "10",
        "units": [v for v in form.getall("units", []) if isinstance(v, str) and v],
        "opens_at": text("opens_at"),
        "closes_at": text("closes_at"),
        "pass_mark": text("pass_mark"),
        "remind_days": text("remind_days"),
        "tie_break": text("tie_break") or "none",
        "review": text("review") or "after_close",
        "key": text("key") or str(uuid.uuid4()),
    }


def _exam_in(request: web.Request, values: dict[str, Any]) -> exams_api.ExamIn:
    points = int(values["points"])
    questions = parse_questions(values["questions"], points)
    days = values["remind_days"]
    return exams_api.ExamIn.model_validate(
        {
            "title": values["title"],
            "body": values["body"] or values["title"],
            "questions": questions,
            "audience": {"units": values["units"]},
            "opens_at": _local(request, values["opens_at"]),
            "closes_at": _local(request, values["closes_at"]),
            "pass_mark": float(values["pass_mark"]) if values["pass_mark"] else None,
            "remind_before": [f"P{int(d)}D" for d in days.split(",") if d.strip()] if days else [],
            "tie_break": values["tie_break"],
            "review": values["review"],
        }
    )


def _form(
    request: web.Request, values: dict[str, Any], errors: list[str], units_: list[Any]
) -> dict[str, Any]:
    return {"values": values, "errors": errors, "units": units_}


@page()
async def list_exams(request: web.Request, session: Session) -> web.Response:
    query = exams_api.ExamQuery(cursor=request.query.get("cursor") or None)
    data = await call(request, session.principal, exams_api.list_exams, query=query)
    context = {
        "items": data["items"],
        "next_cursor": data["next_cursor"],
        "principal_role": session.principal.role,
    }
    return render(request, "study_exams.html", context)


@page()
async def new_exam(request: web.Request, session: Session) -> web.Response:
    values = _values(request.query)
    values |= {"remind_days": "3"} if "remind_days" not in request.query else {}
    units_ = await _unit_choices(request, session.principal)
    return render(request, "study_exam_new.html", _form(request, values, [], units_))


@page()
async def create_exam(request: web.Request, session: Session) -> web.StreamResponse:
    p = session.principal
    values = _values(await request.post())
    try:
        body = _exam_in(request, values)
    except QuestionsError as exc:
        errors = [t(request, "study.bad_question", n=exc.block)]
    except ValidationError as exc:
        errors = [
            t(request, "study.error", field=".".join(str(x) for x in e["loc"]), message=e["msg"])
            for e in exc.errors()
        ]
    except ValueError:
        errors = [t(request, "study.bad_value")]
    else:
        headers = {notices_api.IDEMPOTENCY_HEADER: values["key"]}
        created = await call(request, p, exams_api.create_exam, body=body, headers=headers)
        raise web.HTTPSeeOther(f"/console/quizzes/{created['quiz']['id']}/ranking")
    units_ = await _unit_choices(request, p)
    return render(request, "study_exam_new.html", _form(request, values, errors, units_), status=422)


# --- the daily lesson with its quiz ----------------------------------------------------------------
# The quiz is created first (POST /v1/quizzes, without a notice), then the lesson names it
# (PUT /v1/units/{unit_id}/lessons/{date}). Two handlers cannot share a transaction, so nothing is
# created until every check that can be made beforehand passes: both bodies validate, the quiz
# passes check_quiz, the unit is within the session's reach and that day's lesson was not sent.
# Should the lesson still be refused after that (a race), the page says the quiz was kept; the
# form keeps its Idempotency-Key, so sending it again replays the same quiz rather than adding one.


WRITERS = ("admin", "service")  # who writes lessons (api/lessons.py): secretaries only read them


def _lesson_values(form: MultiDictProxy[Any] | MultiMapping[str]) -> dict[str, Any]:
    def text(name: str) -> str:
        value = form.get(name, "")
        return value.strip() if isinstance(value, str) else ""

    return {
        "unit": text("unit"),
        "day": text("day"),
        "title": text("title"),
        "body": text("body"),
        "questions": text("questions"),
        "points": text("points") or "10",
        "review": text("review") or "answers",
        "key": text("key") or str(uuid.uuid4()),
    }


LESSON_FIELDS = {"title": "title", "body": "body", "date": "day", "unit_id": "unit", "questions": "questions"}


def _problem_errors(request: web.Request, problem: Problem) -> list[str]:
    """A refusal's fields, named as the form names them."""
    if not problem.errors:
        return [problem.detail or problem.title]
    out = []
    for e in problem.errors:
        head = e["field"].split(".")[0].split("[")[0]
        field = LESSON_FIELDS.get(head, "questions")  # the rest (quiz_id, review) are the quiz's
        out.append(
            t(request, "study.error", field=t(request, f"study.lesson_field_{field}"), message=e["message"])
        )
    return out


def _lesson_form(
    values: dict[str, Any], errors: list[str], units_: list[Any], saved: str = ""
) -> dict[str, Any]:
    return {"values": values, "errors": errors, "units": units_, "saved": saved}


@page()
async def new_lesson(request: web.Request, session: Session) -> web.Response:
    session.principal.require(*WRITERS)
    values = _lesson_values(request.query)
    units_ = await _unit_choices(request, session.principal)
    saved = request.query.get("saved", "")
    return render(request, "study_lesson_new.html", _lesson_form(values, [], units_, saved))


@page()
async def create_lesson(request: web.Request, session: Session) -> web.StreamResponse:
    p = session.principal
    p.require(*WRITERS)  # as PUT .../lessons/{date} does, before the quiz is created
    values = _lesson_values(await request.post())
    errors: list[str] = []
    try:
        questions = parse_questions(values["questions"], int(values["points"]))
        quiz = quiz_models.QuizIn.model_validate(
            {"title": values["title"], "kind": "quiz", "questions": questions, "review": values["review"]}
        )
        quiz_models.check_quiz(quiz)
        try:
            lessons_api.parse_day(values["day"])
        except ValueError as exc:
            raise invalid("date", str(exc)) from None
        lesson = {"title": values["title"], "body": values["body"]}
        lessons_api.LessonIn.model_validate(lesson)
        match = {"unit_id": values["unit"], "date": values["day"]}
        try:  # that day's lesson, if any: a sent one cannot be replaced (409 below, before the quiz)
            current = await call(request, p, lessons_api.get_lesson, match=match)
        except Problem as problem:
            if problem.status != 404:
                raise
            if problem.detail != "lesson not found":  # the unit: unknown or out of reach
                raise invalid("unit_id", problem.detail or "unit not found") from None
            current = None
        if current is not None and current["state"] == "sent":
            raise Problem(409, "Conflict", t(request, "study.lesson_sent"))
    except QuestionsError as exc:
        errors = [t(request, "study.bad_question", n=exc.block)]
    except ValidationError as exc:
        errors = [
            t(
                request,
                "study.error",
                field=t(request, f"study.lesson_field_{LESSON_FIELDS.get(str(e['loc'][0]), 'questions')}")
                if e["loc"]
                else "",
                message=e["msg"],
            )
            for e in exc.errors()
        ]
    except Problem as problem:
        errors = _problem_errors(request, problem)
    except ValueError:
        errors = [t(request, "study.bad_value")]
    else:
        headers = {notices_api.IDEMPOTENCY_HEADER: values["key"]}
        created = await call(request, p, quizzes_api.create_quiz, body=quiz, headers=headers)
        body = lessons_api.LessonIn.model_validate(lesson | {"quiz_id": created["id"]})
        try:
            await call(request, p, lessons_api.put_lesson, body=body, match=match)
        except Problem as problem:
            errors = [
                t(request, "study.lesson_quiz_kept", id=created["id"]),
                *_problem_errors(request, problem),
            ]
        else:
            raise web.HTTPSeeOther(f"/console/lessons/new?saved={values['unit']}/{values['day']}")
    units_ = await _unit_choices(request, p)
    return render(request, "study_lesson_new.html", _lesson_form(values, errors, units_), status=422)


def _ranking_query(request: web.Request, limit: int) -> rankings_api.RankingQuery:
    try:
        return rankings_api.RankingQuery(
            unit=request.query.get("unit") or None, limit=limit, cursor=request.query.get("cursor") or None
        )
    except ValidationError:
        raise invalid("unit", "not a unit id") from None


@page()
async def show_ranking(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    query = _ranking_query(request, 200)
    data = await call(request, p, rankings_api.get_ranking, query=query)
    return render(request, "study_ranking.html", {"r": data, "unit": query.unit or ""})


@page()
async def ranking_csv(request: web.Request, session: Session) -> web.StreamResponse:
    sub = as_principal(request, session.principal, {"Accept": rollcall_api.CSV_TYPE})
    query = _ranking_query(request, 100)
    return await rankings_api.get_ranking(sub, Call(None, query))


# --- the member's pages (/m/) ---------------------------------------------------------------------


def _member(session: Session) -> Principal:
    assert session.member_id is not None
    return Principal(None, "member", None, session.member_id)


def answers_from(form: MultiDictProxy[Any], questions: list[dict[str, Any]]) -> dict[str, Any]:
    """The form's answers by question, in the API's shapes (an unanswered question: None)."""
    out: dict[str, Any] = {}
    for q in questions:
        name = f"q.{q['id']}"
        if q["type"] == "multiple":
            picked = [v for v in form.getall(name, []) if isinstance(v, str)]
            out[q["id"]] = picked or None
            continue
        value = form.get(name)
        text = value.strip() if isinstance(value, str) else ""
        if q["type"] == "true_false":
            out[q["id"]] = {"true": True, "false": False}.get(text)
        else:
            out[q["id"]] = text or None
    return out


@page(console_roles=False, member=True)
async def member_quiz(request: web.Request, session: Session) -> web.Response:
    p = _member(session)
    quiz = await call(request, p, quizzes_api.get_quiz)
    ranking = None
    if quiz["kind"] == "exam" and quiz["mine"] and quiz["mine"]["result"]:
        ranking = await call(request, p, rankings_api.get_ranking, query=rankings_api.RankingQuery())
    return render(request, "study_quiz.html", {"quiz": quiz, "ranking": ranking})


@page(console_roles=False, member=True)
async def member_start(request: web.Request, session: Session) -> web.StreamResponse:
    attempt = await call(request, _member(session), quizzes_api.start_attempt)
    raise web.HTTPSeeOther(f"/m/quizzes/{attempt['quiz_id']}/attempts/{attempt['id']}")


@page(console_roles=False, member=True)
async def member_attempt(request: web.Request, session: Session) -> web.Response:
    p = _member(session)
    quiz = await call(request, p, quizzes_api.get_quiz)
    attempt = await call(request, p, quizzes_api.get_attempt)
    ranking = None
    if quiz["kind"] == "exam" and attempt["state"] == "submitted" and attempt["result"]:
        ranking = await call(request, p, rankings_api.get_ranking, query=rankings_api.RankingQuery())
    saved = request.query.get("saved") == "1"
    return render(
        request, "study_attempt.html", {"quiz": quiz, "a": attempt, "ranking": ranking, "saved": saved}
    )


@page(console_roles=False, member=True)
async def member_answer(request: web.Request, session: Session) -> web.StreamResponse:
    """The attempt form's post: save the answers (progress), or submit them (scored at once)."""
    p = _member(session)
    form = await request.post()
    attempt = await call(request, p, quizzes_api.get_attempt)
    body = quiz_models.AnswersIn(answers=answers_from(form, attempt["questions"]))
    target = f"/m/quizzes/{attempt['quiz_id']}/attempts/{attempt['id']}"
    if form.get("action") == "submit":
        await call(request, p, quizzes_api.submit_attempt, body=body)
        raise web.HTTPSeeOther(target)
    await call(request, p, quizzes_api.save_answers, body=body)
    raise web.HTTPSeeOther(target + "?saved=1")
