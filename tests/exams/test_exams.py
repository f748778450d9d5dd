"""POST /v1/exams end to end: a monthly test sent as a notice of kind exam, reminders three days
before the close to those who have not taken it (never to one who submitted), results frozen at
the close (an attempt open then is submitted as of its deadline, nothing else changes), and who
may create and list tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import advance_escalations
from notifier.workers.fanout import fanout_notice
from notifier.workers.quizzes import submit_overdue
from tests.api.conftest import Org, issue_key, problem
from tests.conftest import advance_clock, auth
from tests.exams.conftest import QUESTIONS
from tests.helpers import get, post, put

DAY = 86400.0


def exam_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "十一月月度测试",
        "body": "请在月底前完成本月测试。",
        "questions": QUESTIONS,
        "audience": {"units": ["b1"]},
        "closes_at": (datetime.now(UTC) + timedelta(days=10)).isoformat(),
        "pass_mark": 60,
        "remind_before": ["P3D"],
    }
    return body | over


async def send_exam(
    client: TestClient[Any, Any], deps: WorkerDeps, token: str | None = None, **over: Any
) -> Any:
    created = await post(client, "/v1/exams", exam_body(**over), token=token)
    await fanout_notice(deps, created["notice"]["id"])
    return created


async def take(client: TestClient[Any, Any], quiz_id: str, token: str, answers: dict[str, Any]) -> Any:
    attempt = await post(client, f"/v1/quizzes/{quiz_id}/attempts", {}, token=token)
    resp = await client.post(
        f"/v1/quizzes/{quiz_id}/attempts/{attempt['id']}/submit",
        json={"answers": answers},
        headers=auth(token),
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_a_monthly_test_reminds_only_those_who_have_not_taken_it(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    created = await send_exam(client, deps, token=org.b1_service)
    quiz, notice = created["quiz"], created["notice"]
    assert notice["kind"] == "exam" and quiz["kind"] == "exam" and quiz["attempts_allowed"] == 1
    assert notice["expires_at"] == quiz["closes_at"]  # no reminder after the close
    (due,) = created["reminders_at"]
    assert datetime.fromisoformat(due) == datetime.fromisoformat(quiz["closes_at"]) - timedelta(days=3)
    assert notice["escalation"]["steps"][0]["remind"] == ["inapp"]

    done = await take(client, quiz["id"], org.m1a_member, {"q1": True, "q2": "a"})
    assert done["score"] is None  # review after the close by default: the score waits for it
    # The submitted attempt is m1a's read receipt; m1b has not taken it.
    assert await db.fetchval(
        "SELECT read_at IS NOT NULL FROM recipients WHERE notice_id = $1 AND member_id = 'm1a'", notice["id"]
    )
    assert await db.fetchval(
        "SELECT read_at IS NULL FROM recipients WHERE notice_id = $1 AND member_id = 'm1b'", notice["id"]
    )

    await advance_clock(db, 6 * DAY)  # not yet: the reminder is due 7 days in
    assert await advance_escalations(deps) == 0
    await advance_clock(db, 1 * DAY + 60)
    assert await advance_escalations(deps) == 1
    reminded = await db.fetch(
        "SELECT member_id FROM deliveries WHERE notice_id = $1 AND step > 0 ORDER BY member_id", notice["id"]
    )
    assert [r["member_id"] for r in reminded] == ["m1b"]  # m1a submitted: never reminded


async def test_after_the_close_results_are_frozen(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    m1b = await issue_key(client, {"name": "m1b phone", "role": "member", "member_id": "m1b"})
    await post(client, "/v1/point-rules", {"unit_id": "c", "code": "exam_taken", "points": 5})
    closes = datetime.now(UTC) + timedelta(days=2)
    created = await send_exam(client, deps, closes_at=closes.isoformat(), remind_before=[], review="score")
    quiz_id = created["quiz"]["id"]
    # m1a took it; m1b started, saved one answer and left the attempt open.
    assert (await take(client, quiz_id, org.m1a_member, {"q1": True, "q2": "b"}))["score"] == 50.0
    open_ = await post(client, f"/v1/quizzes/{quiz_id}/attempts", {}, token=m1b)
    path = f"/v1/quizzes/{quiz_id}/attempts/{open_['id']}"
    resp = await client.put(path + "/answers", json={"answers": {"q1": True, "q2": "a"}}, headers=auth(m1b))
    assert resp.status == 200, await resp.text()

    await advance_clock(db, 2 * DAY + 60)
    assert await submit_overdue(deps) == 1  # the tick
    # m1b's attempt was submitted as of the close, with what was saved before it.
    row = await db.fetchrow(
        "SELECT submitted_at, auto_submitted, score FROM quiz_attempts WHERE id = $1", open_["id"]
    )
    assert row is not None and row["auto_submitted"] and row["score"] == 100
    assert row["submitted_at"] == datetime.fromisoformat(created["quiz"]["closes_at"])
    # Taking the test earns exam_taken once, whether submitted by hand or at the close.
    awarded = await db.fetch(
        "SELECT member_id, points, source FROM point_awards WHERE code = 'exam_taken' ORDER BY 1"
    )
    assert [tuple(r) for r in awarded] == [("m1a", 5, f"quiz:{quiz_id}"), ("m1b", 5, f"quiz:{quiz_id}")]
    ranking = await get(client, f"/v1/quizzes/{quiz_id}/ranking")
    assert ranking["closed"] is True
    assert [(m["member_id"], m["rank"], m["score"]) for m in ranking["members"]] == [
        ("m1b", 1, 100.0),
        ("m1a", 2, 50.0),
    ]

    # Nothing else moves: no new attempt, no answer, no second submit -- and no path around the API.
    for token in (org.m1a_member, m1b):
        await problem(await client.post(f"/v1/quizzes/{quiz_id}/attempts", json={}, headers=auth(token)), 409)
    await problem(await client.put(path + "/answers", json={"answers": {"q2": "b"}}, headers=auth(m1b)), 409)
    await problem(await client.post(path + "/submit", json={"answers": {"q2": "b"}}, headers=auth(m1b)), 409)
    with pytest.raises(asyncpg.CheckViolationError, match="frozen"):
        await db.execute("UPDATE quiz_attempts SET score = 0 WHERE id = $1", open_["id"])
    with pytest.raises(asyncpg.CheckViolationError, match="frozen"):
        await db.execute(
            "INSERT INTO quiz_attempts (quiz_id, member_id, n, seed, started_at)"
            " VALUES ($1, 'm2a', 1, 1, now())",
            quiz_id,
        )
    assert (await get(client, f"/v1/quizzes/{quiz_id}/ranking"))["members"] == ranking["members"]


async def test_who_may_create_and_list_tests(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    mine = await send_exam(client, deps, token=org.b1_secretary)
    theirs = await send_exam(client, deps, token=org.b2_service, audience={"units": ["b2"]})
    # Another branch's units are unknown to a branch key; members and strangers may not create.
    resp = await client.post("/v1/exams", json=exam_body(), headers=auth(org.b2_service))
    await problem(resp, 422, [{"field": "audience.units[0]", "message": "unknown unit"}])
    await problem(await client.post("/v1/exams", json=exam_body(), headers=auth(org.m1a_member)), 403)
    listed = await get(client, "/v1/exams", token=org.b1_secretary)
    assert [e["quiz_id"] for e in listed["items"]] == [mine["quiz"]["id"]]
    assert listed["items"][0]["recipients"] == 2 and listed["items"][0]["taken"] == 0
    everything = await get(client, "/v1/exams?limit=1")
    assert [e["quiz_id"] for e in everything["items"]] == [theirs["quiz"]["id"]]
    rest = await get(client, f"/v1/exams?limit=1&cursor={everything['next_cursor']}")
    assert [e["quiz_id"] for e in rest["items"]] == [mine["quiz"]["id"]] and rest["next_cursor"] is None
    await problem(await client.get("/v1/exams", headers=auth(org.m1a_member)), 403)
    # The other branch's test and its ranking do not exist for b1's keys and members.
    for token in (org.b1_secretary, org.b1_service, org.m1a_member):
        await problem(
            await client.get(f"/v1/quizzes/{theirs['quiz']['id']}/ranking", headers=auth(token)), 404
        )
    assert await db.fetchval("SELECT count(*) FROM exams") == 2


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"remind_before": ["P20D"]}, "remind_before[0]"),  # before the test goes out
        ({"remind_before": ["P3D", "PT72H"]}, "remind_before"),
        ({"closes_at": "2020-01-01T00:00:00+00:00"}, "closes_at"),
        ({"closes_at": (datetime.now(UTC) + timedelta(days=40)).isoformat()}, "remind_before[0]"),
        ({"pass_mark": 101}, "pass_mark"),
        ({"remind_channels": ["carrier_pigeon"]}, "remind_channels[0]"),
    ],
)
async def test_bad_tests_are_422_naming_the_field_and_store_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection, over: dict[str, Any], field: str
) -> None:
    await put(client, "/v1/units/b1", {"name": "Branch b1"})
    body = await problem(await client.post("/v1/exams", json=exam_body(**over), headers=auth()), 422)
    assert field in [e["field"] for e in body["errors"]], body
    assert await db.fetchval("SELECT count(*) FROM notices") == 0
    assert await db.fetchval("SELECT count(*) FROM quizzes") == 0


async def test_creation_is_idempotent_per_key(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    headers = {**auth(), "Idempotency-Key": "exam-nov"}
    body = exam_body()
    first = await client.post("/v1/exams", json=body, headers=headers)
    again = await client.post("/v1/exams", json=body, headers=headers)
    assert first.status == again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert (await first.json()) == (await again.json())
    assert await db.fetchval("SELECT count(*) FROM exams") == 1


async def test_an_excused_member_is_not_expected_and_only_the_branch_may_excuse(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps, org: Org
) -> None:
    created = await send_exam(client, deps, audience={"units": ["b1", "b2"]})
    quiz_id = created["quiz"]["id"]
    await take(client, quiz_id, org.m1a_member, {"q1": True, "q2": "a"})
    path = f"/v1/quizzes/{quiz_id}/excused/m1b"
    leave = {"reason": "病假"}
    # Not b2's member, not a member's business, not a member the test reached.
    await problem(await client.put(path, json=leave, headers=auth(org.b2_service)), 404)
    await problem(await client.put(path, json=leave, headers=auth(org.m1a_member)), 403)
    resp = await client.put(
        f"/v1/quizzes/{quiz_id}/excused/nobody", json=leave, headers=auth(org.b1_secretary)
    )
    await problem(resp, 404)
    ok = await client.put(path, json=leave, headers=auth(org.b1_secretary))
    assert ok.status == 200 and (await ok.json())["reason"] == "病假"

    ranking = await get(client, f"/v1/quizzes/{quiz_id}/ranking?unit=c")
    b1 = next(b for b in ranking["branches"] if b["unit_id"] == "b1")
    assert (b1["expected"], b1["participants"], b1["participation_rate"]) == (1, 1, 1.0)
    assert "m1b" not in [m["member_id"] for m in ranking["members"]]
    assert ranking["summary"]["expected"] == 3

    gone = await client.delete(path, headers=auth(org.b1_service))
    assert gone.status == 204
    ranking = await get(client, f"/v1/quizzes/{quiz_id}/ranking?unit=c")
    assert next(b for b in ranking["branches"] if b["unit_id"] == "b1")["expected"] == 2

    await advance_clock(db, 11 * DAY)  # closed: who was expected is final
    await problem(await client.put(path, json=leave, headers=auth()), 409)
    await problem(await client.delete(path, headers=auth()), 409)
