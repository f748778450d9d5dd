"""/v1/quizzes end to end on real PostgreSQL: a quiz sent to a branch, taken by its members,
scored on submit; the answer key absent from every member-visible response; attempts, deadlines
(the engine clock moved forward), the review setting, and 404 for everyone out of reach."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.settings import Settings
from notifier.workers.fanout import fanout_notice
from notifier.workers.lessons import send_due_lessons
from notifier.workers.quizzes import submit_overdue
from tests.api.conftest import Org, issue_key, problem
from tests.conftest import ADMIN_TOKEN, advance_clock, auth
from tests.helpers import worker_deps

# Key values no member-visible body may hold: accepted fill-in answers, and the key field itself.
SECRET_FILL = ["井冈山精神KEY", "Jinggangshan-Spirit-KEY"]

QUESTIONS: list[dict[str, Any]] = [
    {
        "id": "q1",
        "type": "single",
        "text": "The founding year?",
        "points": 2,
        "options": [{"id": "a", "text": "1919"}, {"id": "b", "text": "1921"}, {"id": "c", "text": "1949"}],
        "answer": "b",
    },
    {
        "id": "q2",
        "type": "multiple",
        "text": "Which are 三会?",
        "points": 4,
        "options": [
            {"id": "a", "text": "党员大会"},
            {"id": "b", "text": "支委会"},
            {"id": "c", "text": "党小组会"},
            {"id": "d", "text": "运动会"},
        ],
        "answer": ["a", "b", "c"],
        "partial": "half_if_missing",
    },
    {"id": "q3", "type": "true_false", "text": "党课 is one of 三会一课", "points": 1, "answer": True},
    {"id": "q4", "type": "fill_in", "text": "Name the spirit", "points": 3, "answer": SECRET_FILL},
]


def quiz_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Weekly quiz",
        "questions": QUESTIONS,
        "notice": {"body": "Take this week's quiz", "audience": {"units": ["b1"]}},
    }
    body.update(over)
    return body


async def send_quiz(
    client: TestClient[Any, Any], settings: Settings, token: str, **over: Any
) -> dict[str, Any]:
    """Create a quiz as ``token`` (empty: the admin) and fan its notice out (to b1: m1a, m1b)."""
    resp = await client.post("/v1/quizzes", json=quiz_body(**over), headers=auth(token) if token else auth())
    assert resp.status == 201, await resp.text()
    quiz: dict[str, Any] = await resp.json()
    async with worker_deps(settings) as deps:
        await fanout_notice(deps, quiz["notice_id"])
    return quiz


async def call(
    client: TestClient[Any, Any], method: str, path: str, token: str, body: Any = None, status: int = 200
) -> Any:
    resp = await client.request(method, path, json=body, headers=auth(token))
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    return json.loads(text)


async def member_key(client: TestClient[Any, Any], member_id: str) -> str:
    return await issue_key(client, {"name": f"{member_id} phone", "role": "member", "member_id": member_id})


def assert_no_key(body: Any) -> None:
    """No question object anywhere carries the key, and no accepted answer appears."""
    text = json.dumps(body, ensure_ascii=False)
    assert '"answer"' not in text, text
    for secret in SECRET_FILL:
        assert secret not in text and secret.lower() not in text.lower(), text


async def test_a_member_takes_a_quiz_scored_at_once_and_never_sees_the_key(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    quiz = await send_quiz(client, settings, org.b1_secretary, shuffle_questions=True, shuffle_options=True)
    assert quiz["view"] == "owner" and quiz["max_score"] == 10
    assert [q["answer"] for q in quiz["questions"]][3] == SECRET_FILL  # the owner sees it
    base = f"/v1/quizzes/{quiz['id']}"
    member = org.m1a_member
    seen: list[Any] = []

    view = await call(client, "GET", base, member)
    seen.append(view)
    assert view["view"] == "member" and view["questions"] is None  # no preview before an attempt
    assert view["mine"] == {"attempts": [], "attempts_left": None, "result": None}

    attempt = await call(client, "POST", f"{base}/attempts", member, status=201)
    seen.append(attempt)
    assert sorted(q["id"] for q in attempt["questions"]) == ["q1", "q2", "q3", "q4"]
    again = await call(client, "POST", f"{base}/attempts", member)  # resumed, same order
    seen.append(again)
    assert again["id"] == attempt["id"] and again["questions"] == attempt["questions"]
    aid = attempt["id"]
    saved = await call(
        client, "PUT", f"{base}/attempts/{aid}/answers", member, {"answers": {"q1": "b", "q4": "wrong"}}
    )
    seen.append(saved)
    assert saved["answers"] == {"q1": "b", "q4": "wrong"} and saved["score"] is None
    reloaded = await call(client, "GET", f"{base}/attempts/{aid}", member)
    seen.append(reloaded)
    assert reloaded["questions"] == attempt["questions"]  # stable on reload

    done = await call(
        client,
        "POST",
        f"{base}/attempts/{aid}/submit",
        member,
        {"answers": {"q2": ["a", "c"], "q3": True, "q4": None}},
    )
    seen.append(done)
    # 2 (single) + 2 (half: one right option missing) + 1 (true/false) + 0 (fill-in cleared)
    assert (done["state"], done["score"], done["review"]) == ("submitted", 5, None)
    assert done["result"]["score"] == 5 and done["result"]["final"] is False  # attempts unlimited
    seen.append(await call(client, "GET", base, member))
    seen.append(await call(client, "POST", f"{base}/attempts/{aid}/submit", member, {}))  # a retry
    for body in seen:
        assert_no_key(body)
    # The submitted attempt is the notice's read receipt.
    row = await db.fetchrow(
        "SELECT read_at, read_via FROM recipients WHERE notice_id = $1::uuid AND member_id = 'm1a'",
        quiz["notice_id"],
    )
    assert row is not None and row["read_at"] is not None and row["read_via"] == "quiz"


async def test_review_answers_shows_right_answers_and_after_close_nothing_until_close(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    quiz = await send_quiz(client, settings, org.b1_service, review="answers")
    base = f"/v1/quizzes/{quiz['id']}"
    a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
    done = await call(
        client,
        "POST",
        f"{base}/attempts/{a['id']}/submit",
        org.m1a_member,
        {"answers": {"q4": "ｊｉｎｇｇａｎｇｓｈａｎ-spirit-key "}},
    )
    assert done["score"] == 3  # full-width, case and spaces normalised
    assert {r["question_id"]: (r["points"], r["answer"]) for r in done["review"]}["q4"] == (3, SECRET_FILL)

    closes = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
    later = await send_quiz(client, settings, org.b1_service, review="after_close", closes_at=closes)
    base = f"/v1/quizzes/{later['id']}"
    a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
    done = await call(
        client, "POST", f"{base}/attempts/{a['id']}/submit", org.m1a_member, {"answers": {"q1": "b"}}
    )
    assert (done["score"], done["review"], done["result"]) == (None, None, None)
    assert (await call(client, "GET", base, org.m1a_member))["mine"]["result"] is None
    await advance_clock(db, 3601)
    after = await call(client, "GET", f"{base}/attempts/{a['id']}", org.m1a_member)
    assert after["score"] == 2 and after["review"] is not None
    mine = (await call(client, "GET", base, org.m1a_member))["mine"]
    assert mine["result"]["score"] == 2 and mine["result"]["final"] is True  # the quiz closed


async def test_time_limit_auto_submits_at_the_deadline_by_touch_and_by_the_tick(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    quiz = await send_quiz(client, settings, org.b1_secretary, time_limit_seconds=60, attempts_allowed=1)
    m1b = await member_key(client, "m1b")
    base = f"/v1/quizzes/{quiz['id']}"
    a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
    b = await call(client, "POST", f"{base}/attempts", m1b, status=201)
    assert datetime.fromisoformat(a["deadline"]) - datetime.fromisoformat(a["started_at"]) == timedelta(
        seconds=60
    )
    await call(client, "PUT", f"{base}/attempts/{a['id']}/answers", org.m1a_member, {"answers": {"q1": "b"}})
    await call(client, "PUT", f"{base}/attempts/{b['id']}/answers", m1b, {"answers": {"q3": True}})
    await advance_clock(db, 61)
    # Touched after the deadline: the save is refused, the attempt was submitted as of its deadline.
    late = await client.put(
        f"{base}/attempts/{a['id']}/answers", json={"answers": {"q3": True}}, headers=auth(org.m1a_member)
    )
    await problem(late, 409)
    got = await call(client, "GET", f"{base}/attempts/{a['id']}", org.m1a_member)
    assert (got["state"], got["auto_submitted"], got["score"]) == ("submitted", True, 2)
    assert got["submitted_at"] == a["deadline"] and got["answers"] == {"q1": "b"}
    assert got["result"]["final"] is True  # its one attempt is used
    # Not touched: the tick submits it.
    async with worker_deps(settings) as deps:
        assert await submit_overdue(deps) == 1
        assert await submit_overdue(deps) == 0
    row = await db.fetchrow("SELECT score, auto_submitted FROM quiz_attempts WHERE id = $1::uuid", b["id"])
    assert row is not None and (row["score"], row["auto_submitted"]) == (1, True)
    again = await client.post(f"{base}/attempts", headers=auth(org.m1a_member))
    await problem(again, 409)  # no attempts left


async def test_window_and_attempts_allowed(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    now = datetime.now().astimezone()
    quiz = await send_quiz(
        client,
        settings,
        org.b1_secretary,
        opens_at=(now + timedelta(hours=1)).isoformat(),
        closes_at=(now + timedelta(hours=2)).isoformat(),
        attempts_allowed=2,
        grading="last",
    )
    m1b = await member_key(client, "m1b")
    base = f"/v1/quizzes/{quiz['id']}"
    await problem(await client.post(f"{base}/attempts", headers=auth(org.m1a_member)), 409)
    await advance_clock(db, 3600)
    scores = []
    for answers in ({"q1": "b", "q3": True}, {"q1": "a"}):
        a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
        done = await call(
            client, "POST", f"{base}/attempts/{a['id']}/submit", org.m1a_member, {"answers": answers}
        )
        scores.append(done["result"]["score"])
    assert scores == [3, 0]  # grading 'last'
    assert done["result"]["final"] is True and done["result"]["attempts"] == 2
    await problem(await client.post(f"{base}/attempts", headers=auth(org.m1a_member)), 409)
    await advance_clock(db, 3600)
    await problem(await client.post(f"{base}/attempts", headers=auth(m1b)), 409)  # closed


async def test_bad_answers_are_422_naming_the_field_and_nothing_is_saved(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    quiz = await send_quiz(client, settings, org.b1_secretary)
    base = f"/v1/quizzes/{quiz['id']}"
    a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
    for answers, errors in (
        ({"q1": "z"}, [{"field": "answers.q1", "message": "unknown option 'z'"}]),
        (
            {"q2": ["a", "x"], "q9": "a"},
            [
                {"field": "answers.q2", "message": "unknown option 'x'"},
                {"field": "answers.q9", "message": "unknown question"},
            ],
        ),
        ({"q3": "yes"}, [{"field": "answers.q3", "message": "must be true or false"}]),
    ):
        for path in (f"{base}/attempts/{a['id']}/answers", f"{base}/attempts/{a['id']}/submit"):
            method = "PUT" if path.endswith("answers") else "POST"
            resp = await client.request(method, path, json={"answers": answers}, headers=auth(org.m1a_member))
            await problem(resp, 422, errors)
    row = await db.fetchrow("SELECT answers, submitted_at FROM quiz_attempts WHERE id = $1::uuid", a["id"])
    assert row is not None and (row["answers"], row["submitted_at"]) == ("{}", None)


async def test_quiz_rules_are_422_naming_the_field(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    bad = [
        {**QUESTIONS[0], "answer": "z"},
        {**QUESTIONS[1], "id": "q1", "partial": "half_if_missing", "answer": []},
        {**QUESTIONS[2], "options": [{"id": "a", "text": "A"}], "partial": "all_or_nothing"},
        {**QUESTIONS[3], "answer": ["  "]},
    ]
    body = {"title": "t", "questions": bad, "review": "after_close", "pass_mark": 99}
    resp = await client.post("/v1/quizzes", json=body, headers=auth())
    out = await problem(resp, 422)
    assert [e["field"] for e in out["errors"]] == [
        "questions[0].answer",
        "questions[1].id",
        "questions[1].answer",
        "questions[2].options",
        "questions[2].partial",
        "questions[3].answer",
        "review",
        "pass_mark",
    ]
    assert await db.fetchval("SELECT count(*) FROM quizzes") == 0


async def test_creation_is_idempotent_per_key(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    for body in (quiz_body(), quiz_body(notice=None)):
        headers = {**auth(org.b1_service), "Idempotency-Key": f"k-{body['notice'] is None}"}
        first = await client.post("/v1/quizzes", json=body, headers=headers)
        second = await client.post("/v1/quizzes", json=body, headers=headers)
        assert first.status == second.status == 201
        assert (await first.json())["id"] == (await second.json())["id"]
        assert second.headers.get("Idempotent-Replayed") == "true"
    assert await db.fetchval("SELECT count(*) FROM quizzes") == 2
    assert await db.fetchval("SELECT count(*) FROM notices") == 1


async def test_an_exam_is_not_made_here_but_with_post_exams(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """A quiz of kind exam made here would lack its test (no exams row: no tie-break, no
    reminders, no frozen results nor ranking) and go out as an exam notice: 422 naming kind and
    the endpoint that makes exams, and nothing stored -- no quiz, notice, key or audit entry."""
    tables = ("quizzes", "exams", "notices", "idempotency_keys", "audit_log")
    count = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in tables)
    before = dict(await db.fetchrow(count) or {})
    message = "a monthly test (kind exam) is created with POST /v1/exams"
    for i, body in enumerate((quiz_body(kind="exam"), quiz_body(kind="exam", notice=None))):
        for token in (org.b1_service, ADMIN_TOKEN):
            headers = {**auth(token), "Idempotency-Key": f"exam-{i}"}
            resp = await client.post("/v1/quizzes", json=body, headers=headers)
            await problem(resp, 422, [{"field": "kind", "message": message}])
    assert dict(await db.fetchrow(count) or {}) == before
    assert before["quizzes"] == before["notices"] == 0


async def test_everyone_out_of_reach_gets_404(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    quiz = await send_quiz(client, settings, org.b1_secretary)
    base = f"/v1/quizzes/{quiz['id']}"
    a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
    b2_secretary = await issue_key(client, {"name": "b2 desk", "role": "secretary", "unit_id": "b2"})
    m1b = await member_key(client, "m1b")
    attempt = f"{base}/attempts/{a['id']}"
    requests: list[tuple[str, str, Any]] = [
        ("GET", base, None),
        ("POST", f"{base}/attempts", None),
        ("GET", attempt, None),
        ("PUT", f"{attempt}/answers", {"answers": {}}),
        ("POST", f"{attempt}/submit", {"answers": {}}),
    ]
    for token in (org.m2a_member, b2_secretary, org.b2_service):  # another branch's
        for method, path, body in requests:
            await problem(await client.request(method, path, json=body, headers=auth(token)), 404)
    for method, path, body in requests[2:]:  # a member it went to, but not their attempt
        await problem(await client.request(method, path, json=body, headers=auth(m1b)), 404)
    # The owning branch's secretary reads, but does not take it.
    assert (await call(client, "GET", base, org.b1_secretary))["view"] == "owner"
    assert (await call(client, "GET", attempt, org.b1_secretary))["id"] == a["id"]
    await problem(await client.post(f"{base}/attempts", headers=auth(org.b1_secretary)), 403)
    # A quiz the county sent to branch 1: its secretary reads it without the key, not the attempts.
    county = await send_quiz(client, settings, "")
    read = await call(client, "GET", f"/v1/quizzes/{county['id']}", org.b1_secretary)
    assert read["view"] == "reader" and read["questions"]
    assert_no_key(read)
    theirs = await call(client, "POST", f"/v1/quizzes/{county['id']}/attempts", org.m1a_member, status=201)
    path = f"/v1/quizzes/{county['id']}/attempts/{theirs['id']}"
    await problem(await client.get(path, headers=auth(org.b1_secretary)), 404)
    for token in (b2_secretary, org.b2_service, org.m2a_member):
        await problem(await client.get(f"/v1/quizzes/{county['id']}", headers=auth(token)), 404)
    missing = "/v1/quizzes/00000000-0000-0000-0000-000000000000"
    await problem(await client.get(missing, headers=auth()), 404)
    await problem(await client.get("/v1/quizzes/not-a-uuid", headers=auth()), 404)


async def test_points_on_the_first_final_result_once(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    await db.execute(
        "INSERT INTO point_rules (root_unit_id, code, points)"
        " VALUES ('c', 'quiz_full', 2), ('c', 'quiz_partial', 1)"
    )
    right = {"q1": "b", "q2": ["a", "b", "c"], "q3": True, "q4": "井冈山精神key"}
    m1b = await member_key(client, "m1b")
    once = await send_quiz(client, settings, org.b1_secretary, attempts_allowed=1)
    base = f"/v1/quizzes/{once['id']}"
    for token, answers in ((org.m1a_member, right), (m1b, {"q1": "b"})):
        a = await call(client, "POST", f"{base}/attempts", token, status=201)
        await call(client, "POST", f"{base}/attempts/{a['id']}/submit", token, {"answers": answers})
        await call(client, "POST", f"{base}/attempts/{a['id']}/submit", token, {})  # a retry earns nothing
    # Unlimited attempts: final (and earning) only when the quiz closes -- the tick finalises it.
    closes = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
    open_ended = await send_quiz(client, settings, org.b1_secretary, closes_at=closes)
    base = f"/v1/quizzes/{open_ended['id']}"
    a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
    await call(client, "POST", f"{base}/attempts/{a['id']}/submit", org.m1a_member, {"answers": {"q3": True}})
    ledger = "SELECT member_id, code, source, points FROM point_awards ORDER BY member_id, source"
    expected = [
        ("m1a", "quiz_full", f"quiz:{once['id']}", 2),
        ("m1b", "quiz_partial", f"quiz:{once['id']}", 1),
    ]
    assert [tuple(r) for r in await db.fetch(ledger)] == expected
    await advance_clock(db, 3601)
    async with worker_deps(settings) as deps:
        await submit_overdue(deps)
    got = [tuple(r) for r in await db.fetch(ledger)]
    assert sorted(got) == sorted([*expected, ("m1a", "quiz_partial", f"quiz:{open_ended['id']}", 1)])


async def test_a_lesson_carries_its_quiz_and_the_submitted_attempt_reads_the_lesson(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    await db.execute("INSERT INTO point_rules (root_unit_id, code, points) VALUES ('c', 'lesson_read', 1)")
    quiz = await call(client, "POST", "/v1/quizzes", org.b1_service, quiz_body(notice=None), status=201)
    other = await call(client, "POST", "/v1/quizzes", org.b2_service, quiz_body(notice=None), status=201)
    # Today's local date in Asia/Shanghai (the default zone); its 08:00 lesson time reached.
    day = await db.fetchval("SELECT (notifier_now() AT TIME ZONE 'Asia/Shanghai')::date")
    wait = await db.fetchval(
        "SELECT extract(epoch FROM (($1::date + time '08:00') AT TIME ZONE 'Asia/Shanghai')"
        " - notifier_now())",
        day,
    )
    if wait > 0:
        await advance_clock(db, float(wait) + 1)
    path = f"/v1/units/b1/lessons/{day.isoformat()}"
    lesson = {"title": "第一课", "body": "Read, then take the quiz."}
    resp = await client.put(path, json={**lesson, "quiz_id": other["id"]}, headers=auth(org.b1_service))
    await problem(resp, 422, [{"field": "quiz_id", "message": "unknown quiz"}])
    saved = await call(client, "PUT", path, org.b1_service, {**lesson, "quiz_id": quiz["id"]}, status=201)
    assert saved["quiz_id"] == quiz["id"]
    base = f"/v1/quizzes/{quiz['id']}"
    await problem(await client.get(base, headers=auth(org.m1a_member)), 404)  # not sent yet
    async with worker_deps(settings) as deps:
        assert await send_due_lessons(deps) == 1
        sent = await call(client, "GET", path, org.b1_service)
        await fanout_notice(deps, sent["notice_id"])
    assert (await call(client, "GET", base, org.b1_service))["notice_id"] == sent["notice_id"]
    a = await call(client, "POST", f"{base}/attempts", org.m1a_member, status=201)
    await call(client, "POST", f"{base}/attempts/{a['id']}/submit", org.m1a_member, {"answers": {"q1": "b"}})
    row = await db.fetchrow(
        "SELECT read_via FROM recipients WHERE notice_id = $1::uuid AND member_id = 'm1a'", sent["notice_id"]
    )
    assert row is not None and row["read_via"] == "quiz"
    # ... and a lesson read like any other: lesson_read (this rule asks no dwell).
    earned = (
        "SELECT points FROM point_awards WHERE member_id = 'm1a' AND code = 'lesson_read' AND source = $1"
    )
    assert await db.fetchval(earned, f"notice:{sent['notice_id']}") == 1
    # Edited after it went out, keeping its quiz: fine; another lesson cannot take that quiz.
    await call(
        client, "PUT", path, org.b1_service, {**lesson, "title": "第一课 (rev.)", "quiz_id": quiz["id"]}
    )
    tomorrow = f"/v1/units/b1/lessons/{(day + timedelta(days=1)).isoformat()}"
    again = await client.put(tomorrow, json={**lesson, "quiz_id": quiz["id"]}, headers=auth(org.b1_service))
    await problem(again, 422)


async def test_concurrent_starts_and_submits_make_one_attempt_and_one_result(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection, org: Org
) -> None:
    quiz = await send_quiz(client, settings, org.b1_secretary)
    base = f"/v1/quizzes/{quiz['id']}"
    starts = await asyncio.gather(
        *(client.post(f"{base}/attempts", headers=auth(org.m1a_member)) for _ in range(4))
    )
    assert sorted(r.status for r in starts) == [200, 200, 200, 201]
    ids = {(await r.json())["id"] for r in starts}
    assert len(ids) == 1
    aid = ids.pop()
    body = {"answers": {"q1": "b"}}
    submits = await asyncio.gather(
        *(
            client.post(f"{base}/attempts/{aid}/submit", json=body, headers=auth(org.m1a_member))
            for _ in range(3)
        )
    )
    assert sorted(r.status for r in submits) == [200, 409, 409]  # the others brought answers too late
    row = await db.fetchrow("SELECT attempts, score FROM quiz_results WHERE quiz_id = $1::uuid", quiz["id"])
    assert row is not None and (row["attempts"], row["score"]) == (1, 2)
    assert await db.fetchval("SELECT count(*) FROM quiz_attempts") == 1
