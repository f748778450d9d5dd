"""GET /v1/quizzes/{id}/ranking over a real fan-out: competition ranks and the time tie-break,
branches ranked by participation (3 of 40 never tops 38 of 40), what each caller sees, and the
CSV for appraisal."""

from __future__ import annotations

import csv
import io
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.workers.context import WorkerDeps
from tests.api.conftest import issue_key, problem
from tests.conftest import auth
from tests.exams.conftest import build_branches, graded, sent_quiz
from tests.helpers import get, put


async def test_members_rank_1_2_2_4_and_time_breaks_ties_only_when_configured(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps
) -> None:
    org = await build_branches(client, {"b1": 5})
    m = org["b1"]
    results = {m[0]: (90, 300), m[1]: (80, 200), m[2]: (80, 100), m[3]: (70, 50)}
    plain = await sent_quiz(client, db, deps, ["b1"])
    timed = await sent_quiz(client, db, deps, ["b1"], tie_break="time")
    for quiz in (plain, timed):
        await graded(db, quiz, results)

    data = await get(client, f"/v1/quizzes/{plain}/ranking")
    assert [(r["member_id"], r["rank"]) for r in data["members"]] == [
        (m[0], 1),
        (m[1], 2),
        (m[2], 2),
        (m[3], 4),
        (m[4], None),
    ]
    assert data["members"][-1]["taken"] is False and data["members"][3]["passed"] is True
    timed_data = await get(client, f"/v1/quizzes/{timed}/ranking")
    assert [(r["member_id"], r["rank"]) for r in timed_data["members"][:4]] == [
        (m[0], 1),
        (m[2], 2),
        (m[1], 3),
        (m[3], 4),
    ]
    b1 = data["branches"][0]
    assert (b1["expected"], b1["participants"], b1["participation_rate"]) == (5, 4, 0.8)
    assert (b1["mean_score"], b1["mean_score_all"], b1["passed"], b1["pass_rate"]) == (80.0, 64.0, 4, 1.0)

    # Paged: the cursor continues where the page stopped.
    first = await get(client, f"/v1/quizzes/{plain}/ranking?limit=3")
    rest = await get(client, f"/v1/quizzes/{plain}/ranking?limit=3&cursor={first['next_cursor']}")
    assert [r["member_id"] for r in first["members"] + rest["members"]] == [
        r["member_id"] for r in data["members"]
    ]
    assert rest["next_cursor"] is None


async def test_a_branch_where_3_of_40_took_it_does_not_top_one_where_38_of_40_did(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps
) -> None:
    org = await build_branches(client, {"few": 40, "most": 40, "none": 2})
    quiz = await sent_quiz(client, db, deps, ["few", "most", "none"])
    results = {m: (100, 60) for m in org["few"][:3]}  # three perfect scores
    results |= {m: (60 + i % 10, 60) for i, m in enumerate(org["most"][:38])}
    await graded(db, quiz, results)

    data = await get(client, f"/v1/quizzes/{quiz}/ranking?unit=c")
    ranked = [(b["unit_id"], b["rank"], b["expected"], b["participants"]) for b in data["branches"]]
    assert ranked == [("most", 1, 40, 38), ("few", 2, 40, 3), ("none", 3, 2, 0)]
    few = data["branches"][1]
    assert few["mean_score"] == 100.0 and few["mean_score_all"] == 7.5 and few["participation_rate"] == 0.075
    assert data["summary"]["expected"] == 82 and data["summary"]["participants"] == 41
    assert "Wilson" in data["rule"]

    # Excuse the 37 who did not take it: 3 of 3 now, a perfect rate on a small sample -- still second.
    await db.executemany(
        "INSERT INTO exam_excused (quiz_id, member_id, reason) VALUES ($1, $2, '病假')",
        [(quiz, m) for m in org["few"][3:]],
    )
    data = await get(client, f"/v1/quizzes/{quiz}/ranking?unit=c")
    ranked = [(b["unit_id"], b["rank"], b["expected"], b["participation_rate"]) for b in data["branches"]]
    assert ranked == [("most", 1, 40, 0.95), ("few", 2, 3, 1.0), ("none", 3, 2, 0.0)]


async def test_who_sees_what_of_a_ranking(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps
) -> None:
    org = await build_branches(client, {"b1": 3, "b2": 3})
    quiz = await sent_quiz(client, db, deps, ["b1", "b2"])
    b1, b2 = org["b1"], org["b2"]
    await graded(db, quiz, {b1[0]: (70, 10), b1[1]: (90, 10), b2[0]: (100, 10)})
    secretary = await issue_key(client, {"name": "b1 desk", "role": "secretary", "unit_id": "b1"})
    outsider_unit = await put(client, "/v1/units/x", {"name": "外单位"})
    assert outsider_unit["id"] == "x"
    outsider = await issue_key(client, {"name": "x desk", "role": "secretary", "unit_id": "x"})
    member = await issue_key(client, {"name": "phone", "role": "member", "member_id": b1[0]})
    await put(client, "/v1/members/x-1", {"name": "外人", "units": ["x"]})
    stranger = await issue_key(client, {"name": "phone", "role": "member", "member_id": "x-1"})

    # The branch secretary: its own members only, ranked among themselves.
    mine = await get(client, f"/v1/quizzes/{quiz}/ranking", token=secretary)
    assert [(r["member_id"], r["rank"]) for r in mine["members"]] == [(b1[1], 1), (b1[0], 2), (b1[2], None)]
    assert mine["unit_id"] == "b1" and mine["summary"]["expected"] == 3
    for path in (f"/v1/quizzes/{quiz}/ranking?unit=b2", f"/v1/quizzes/{quiz}/ranking?unit=c"):
        await problem(await client.get(path, headers=auth(secretary)), 404)
    # Another organisation's secretary and a member the test never reached: nothing, not even that it exists.
    for token in (outsider, stranger):
        await problem(await client.get(f"/v1/quizzes/{quiz}/ranking", headers=auth(token)), 404)
    await problem(
        await client.get("/v1/quizzes/00000000-0000-0000-0000-000000000000/ranking", headers=auth()), 404
    )
    await problem(await client.get("/v1/quizzes/nope/ranking", headers=auth()), 404)

    # A member: their own result and rank among every taker; no names, no branches (default off).
    me = await get(client, f"/v1/quizzes/{quiz}/ranking", token=member)
    assert me["me"] == {
        "taken": True,
        "rank": 3,
        "takers": 3,
        "score": 70.0,
        "max_score": 100.0,
        "passed": True,
        "seconds_taken": 10.0,
        "submitted_at": me["me"]["submitted_at"],
    }
    assert me["members"] == [] and me["branches"] == [] and me["summary"] is None
    await problem(await client.get(f"/v1/quizzes/{quiz}/ranking?unit=b1", headers=auth(member)), 404)

    # The organisation turns names on: the member sees their own branch's leaderboard, not b2's.
    await problem(
        await client.put("/v1/units/b1/ranking-settings", json={"show_names": True}, headers=auth()), 422
    )
    b1_app = await issue_key(client, {"name": "b1 app", "role": "service", "unit_id": "b1"})
    settings_put = [(secretary, 403), (b1_app, 404), (member, 403)]
    for token, status in settings_put:
        resp = await client.put(
            "/v1/units/c/ranking-settings", json={"show_names": True}, headers=auth(token)
        )
        await problem(resp, status)
    await problem(await client.get("/v1/units/c/ranking-settings", headers=auth(b1_app)), 404)
    assert (await get(client, "/v1/units/c/ranking-settings"))["show_names"] is False
    await put(client, "/v1/units/c/ranking-settings", {"show_names": True})
    me = await get(client, f"/v1/quizzes/{quiz}/ranking", token=member)
    assert [(r["member_id"], r["rank"]) for r in me["members"]] == [(b1[1], 1), (b1[0], 2), (b1[2], None)]


async def test_the_csv_for_appraisal_opens_in_excel_and_runs_no_formula(
    client: TestClient[Any, Any], db: asyncpg.Connection, deps: WorkerDeps
) -> None:
    org = await build_branches(client, {"b1": 3})
    await put(client, "/v1/members/b1-02", {"name": '=HYPERLINK("http://evil")', "units": ["b1"]})
    quiz = await sent_quiz(client, db, deps, ["b1"])
    await graded(db, quiz, {org["b1"][0]: (90, 61), org["b1"][2]: (55, 30)})
    resp = await client.get(f"/v1/quizzes/{quiz}/ranking", headers={**auth(), "Accept": "text/csv"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    raw = await resp.read()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0][:3] == ["rank", "member_id", "name"]
    assert rows[1] == ["1", "b1-00", "党员b1-00", "b1", "yes", "90", "100", "90.0", "yes", "61", rows[1][10]]
    assert rows[2][:3] == ["2", "b1-02", '\'=HYPERLINK("http://evil")'] and rows[2][8] == "no"
    assert rows[3][:5] == ["", "b1-01", "党员b1-01", "b1", "no"]
    secretary = await issue_key(client, {"name": "x", "role": "secretary", "unit_id": "c"})
    await put(client, "/v1/units/x", {"name": "外单位"})
    outsider = await issue_key(client, {"name": "x desk", "role": "secretary", "unit_id": "x"})
    ok = await client.get(f"/v1/quizzes/{quiz}/ranking", headers={**auth(secretary), "Accept": "text/csv"})
    assert ok.status == 200 and len((await ok.text()).splitlines()) == 4
    await problem(
        await client.get(f"/v1/quizzes/{quiz}/ranking", headers={**auth(outsider), "Accept": "text/csv"}), 404
    )
