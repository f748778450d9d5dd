"""The study pages without a browser: who may open which page (a member another member's attempt,
a sibling branch's secretary a test it was not sent: 404), the CSRF guard on the attempt form,
the console form's refusals (nothing stored), and no answer key in any member page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.console.study import parse_questions
from notifier.settings import Settings
from notifier.workers.fanout import fanout_notice
from tests.console.test_console import csrf_of, org, sign_in
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
