"""The study pages without a browser: who may open which page (a member another member's attempt,
a sibling branch's secretary a test it was not sent: 404), the CSRF guard on the attempt form,
the console form's refusals (nothing stored), and no answer key in any member page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.console.study import parse_questions
from notifier.settings import Settings
from notifier.workers.fanout import fanout_notice
from tests.api.conftest import issue_key
from tests.console.test_console import csrf_of, org, sign_in, sign_in_with_token
from tests.helpers import post, worker_deps

SECRET = "延安精神KEY"
QUESTIONS: list[dict[str, Any]] = [
    {"id": "q1", "type": "fill_in", "text": "红色精神之一", "points": 50, "answer": ["井冈山精神", SECRET]},
    {"id": "q2", "type": "true_false", "text": "党课是三会一课之一", "points": 50, "answer": True},
]


async def exam_for(client: TestClient[Any, Any], settings: Settings, units: list[str]) -> str:
    body = {
        "title": "月度测试",
        "body": "请完成",
        "questions": QUESTIONS,
        "audience": {"units": units},
        "closes_at": (datetime.now(UTC) + timedelta(days=5)).isoformat(),
        "review": "answers",
    }
    created = await post(client, "/v1/exams", body)
    async with worker_deps(settings) as deps:
        await fanout_notice(deps, created["notice"]["id"])
    return str(created["quiz"]["id"])


def test_the_question_text_format() -> None:
    text = "题一\n- 甲\n* 乙\n\n题二\n* 甲\n* 乙\n- 丙\n\n题三\n= 错\n\n题四\n=  答案 | 另一个 \n"
    assert parse_questions(text, 5) == [
        {"id": "q1", "text": "题一", "points": 5, "type": "single", "answer": "b",
         "options": [{"id": "a", "text": "甲"}, {"id": "b", "text": "乙"}]},
        {"id": "q2", "text": "题二", "points": 5, "type": "multiple", "answer": ["a", "b"],
         "partial": "half_if_missing",
         "options": [{"id": "a", "text": "甲"}, {"id": "b", "text": "乙"}, {"id": "c", "text": "丙"}]},
        {"id": "q3", "text": "题三", "points": 5, "type": "true_false", "answer": False},
        {"id": "q4", "text": "题四", "points": 5, "type": "fill_in", "answer": ["答案", "另一个"]},
    ]  # fmt: skip


async def test_members_reach_only_their_own_attempts_and_never_the_key(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    await org(client)
    quiz_id = await exam_for(client, settings, ["b0"])
    assert await sign_in(client, "m0") == "/m/"
    notice_id = await db.fetchval("SELECT notice_id FROM exams")
    page = await (await client.get(f"/m/notices/{notice_id}")).text()
    assert f'href="/m/quizzes/{quiz_id}"' in page and SECRET not in page
    csrf = await csrf_of(client, f"/m/quizzes/{quiz_id}")
    started = await client.post(f"/m/quizzes/{quiz_id}/attempts", data={"csrf": csrf}, allow_redirects=False)
    assert started.status == 303
    attempt_path = started.headers["Location"]
    page = await (await client.get(attempt_path)).text()
    assert 'name="q.q1"' in page and SECRET not in page and "井冈山精神" not in page

    # Without the CSRF token nothing is saved; with it the answers are saved, then submitted.
    refused = await client.post(attempt_path, data={"q.q1": "x", "action": "save"}, allow_redirects=False)
    assert refused.status == 403
    assert await db.fetchval("SELECT answers FROM quiz_attempts") == "{}"
    answers = {"csrf": csrf, "q.q1": "延安精神", "q.q2": "true"}
    saved = await client.post(attempt_path, data=answers | {"action": "save"}, allow_redirects=False)
    assert saved.status == 303 and saved.headers["Location"].endswith("?saved=1")
    assert await db.fetchval("SELECT answers->>'q1' FROM quiz_attempts") == "延安精神"
    done = await client.post(attempt_path, data=answers | {"action": "submit"}, allow_redirects=False)
    assert done.status == 303
    page = await (await client.get(attempt_path)).text()
    assert re.search(r'id="score">[^<]*50', page)  # review "answers": the right answers shown now
    assert "井冈山精神" in page

    # Another member of the branch: not m0's attempt, not even that it exists.
    assert await sign_in(client, "m1") == "/m/"
    assert (await client.get(attempt_path)).status == 404
    csrf = await csrf_of(client, f"/m/quizzes/{quiz_id}")
    stolen = await client.post(attempt_path, data={"csrf": csrf, "q.q1": "x", "action": "save"})
    assert stolen.status == 404
    # A member of another branch: the test does not exist.
    assert await sign_in(client, "x1") == "/m/"
    assert (await client.get(f"/m/quizzes/{quiz_id}")).status == 404


async def test_the_console_shows_a_test_to_the_branch_it_was_sent_to_only(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    await org(client)
    quiz_id = await exam_for(client, settings, ["b0"])
    assert await sign_in(client, "s0") == "/console/"
    page = await (await client.get(f"/console/quizzes/{quiz_id}/ranking")).text()
    assert 'data-member="m0"' in page and 'data-unit="b0"' not in page  # b0 has no child units
    csv = await client.get(f"/console/quizzes/{quiz_id}/ranking.csv")
    assert csv.status == 200 and (await csv.read()).startswith(b"\xef\xbb\xbf")
    assert f'data-quiz="{quiz_id}"' in await (await client.get("/console/exams")).text()
    assert (await client.get(f"/console/quizzes/{quiz_id}/ranking?unit=c")).status == 404

    # The form refuses what it cannot read, naming it; nothing is stored.
    csrf = await csrf_of(client, "/console/exams/new")
    form = {
        "csrf": csrf,
        "title": "测试",
        "questions": "题一\n没有选项也没有答案",
        "closes_at": "2030-01-01T10:00",
    }
    resp = await client.post("/console/exams", data=form)
    assert resp.status == 422 and "第 1 题" in await resp.text()
    form |= {"questions": "题一\n= 对", "units": "b1"}  # b1 is not s0's
    resp = await client.post("/console/exams", data=form)
    assert resp.status == 422
    assert await db.fetchval("SELECT count(*) FROM quizzes") == 1

    assert await sign_in(client, "s1") == "/console/"
    for path in (f"/console/quizzes/{quiz_id}/ranking", f"/console/quizzes/{quiz_id}/ranking.csv"):
        assert (await client.get(path)).status == 404
    assert f'data-quiz="{quiz_id}"' not in await (await client.get("/console/exams")).text()


LESSON_QUIZ = f"红色精神之一\n= 井冈山精神 | {SECRET}\n\n党课是三会一课之一\n= 对"


async def stored(db: asyncpg.Connection) -> tuple[int, int]:
    return await db.fetchval("SELECT count(*) FROM lessons"), await db.fetchval(
        "SELECT count(*) FROM quizzes"
    )


async def test_the_console_creates_a_daily_lesson_with_its_quiz(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await org(client)
    # Lessons are written by admins and service keys (secretaries read them, api/lessons.py): a
    # secretary's session does not get the form, nor may it post it; a member's is sent to /m/.
    assert await sign_in(client, "s0") == "/console/"
    assert (await client.get("/console/lessons/new")).status == 403
    assert 'id="new-lesson"' not in await (await client.get("/console/exams")).text()
    csrf = await csrf_of(client, "/console/exams/new")
    form = {"csrf": csrf, "unit": "b0", "day": "2030-03-01", "title": "第一课", "body": "学习内容"}
    assert (await client.post("/console/lessons", data=form | {"questions": LESSON_QUIZ})).status == 403
    assert await sign_in(client, "m0") == "/m/"
    resp = await client.get("/console/lessons/new", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/m/"
    assert await stored(db) == (0, 0)

    service = await issue_key(client, {"name": "b0 hr", "role": "service", "unit_id": "b0"})
    await sign_in_with_token(client, service)
    assert 'href="/console/lessons/new"' in await (await client.get("/console/exams")).text()
    form["csrf"] = await csrf_of(client, "/console/lessons/new")
    # Refusals name the form's field, and store nothing (neither the quiz nor the lesson).
    for bad, said in (
        ({"questions": "题一\n没有选项也没有答案\n\n题二\n= 对"}, "第 1 题"),
        ({"questions": LESSON_QUIZ, "unit": "b1"}, "单位"),  # not the key's unit
        ({"questions": LESSON_QUIZ, "day": "2030-13-01"}, "日期"),
        ({"questions": LESSON_QUIZ, "body": ""}, "课程内容"),
    ):
        resp = await client.post("/console/lessons", data=form | bad)
        errors = re.findall(r'<p class="error" role="alert">([^<]*)</p>', await resp.text())
        assert resp.status == 422 and len(errors) == 1 and said in errors[0], (bad, errors)
    assert await stored(db) == (0, 0)

    resp = await client.post(
        "/console/lessons", data=form | {"questions": LESSON_QUIZ}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    assert "lesson-saved" in await (await client.get(resp.headers["Location"])).text()
    lesson = await db.fetchrow("SELECT * FROM lessons")
    assert (
        lesson is not None
        and lesson["unit_id"] == "b0"
        and str(lesson["day"]) == "2030-03-01"
        and lesson["title"] == "第一课"
    )
    quiz = await db.fetchrow("SELECT * FROM quizzes WHERE id = $1", lesson["quiz_id"])
    assert quiz is not None and quiz["notice_id"] is None and quiz["scope_unit_id"] == "b0"
    questions = quiz["questions"] if isinstance(quiz["questions"], list) else json.loads(quiz["questions"])
    assert [(q["type"], q["answer"]) for q in questions] == [
        ("fill_in", ["井冈山精神", SECRET]),
        ("true_false", True),
    ]
