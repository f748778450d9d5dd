"""Study points over HTTP: point rules (who may manage them, validation), lesson reads earning once
by every receipt path, dwell measured by the server's clock, the member's and the branches' points,
and BOLA for every endpoint."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.db import points
from notifier.links import make_token
from notifier.settings import Settings
from tests.api.conftest import Org, issue_key, problem
from tests.api.test_scoping import _active
from tests.conftest import advance_clock, auth, frozen_clock
from tests.helpers import get, post, put

LESSON_RULE = {"unit_id": "c", "code": "lesson_read", "points": 1, "daily_cap": 6, "min_dwell_seconds": 0}


async def _rule_rows(db: asyncpg.Connection) -> list[str]:
    return [r["r"] for r in await db.fetch("SELECT to_jsonb(t)::text AS r FROM point_rules t ORDER BY r")]


async def _other_org(client: TestClient[Any, Any]) -> str:
    """Another organisation 'x' with a member and a root secretary; the secretary's key."""
    await put(client, "/v1/units/x", {"name": "Elsewhere"})
    await put(client, "/v1/members/mx", {"name": "Outsider", "units": ["x"]})
    return await issue_key(client, {"name": "x desk", "role": "secretary", "unit_id": "x"})


async def _lesson(
    client: TestClient[Any, Any], units: list[str], kind: str = "lesson", token: str | None = None
) -> str:
    body = {"kind": kind, "title": "今日一课", "body": "学习", "audience": {"units": units}}
    nid = str((await post(client, "/v1/notices", body, token=token, status=202))["id"])
    await _active(client, nid)
    return nid


async def test_rules_are_validated_and_managed_by_admin_or_the_root_secretary(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    root_secretary = await issue_key(client, {"name": "c desk", "role": "secretary", "unit_id": "c"})
    x_secretary = await _other_org(client)
    # Bad input: a problem naming the field as written, nothing stored.
    cases: list[tuple[dict[str, Any], int, list[str]]] = [
        ({**LESSON_RULE, "unit_id": "b1"}, 422, ["unit_id"]),  # not a root unit
        ({**LESSON_RULE, "unit_id": "nope"}, 422, ["unit_id"]),
        ({**LESSON_RULE, "daily_cap": 0}, 422, ["daily_cap"]),
        ({**LESSON_RULE, "points": 3, "daily_cap": 2}, 422, ["daily_cap"]),
        ({**LESSON_RULE, "code": "Lesson Read"}, 422, ["code"]),
        ({**LESSON_RULE, "min_dwell_seconds": -1, "points": 0}, 422, ["points", "min_dwell_seconds"]),
        ({**LESSON_RULE, "extra": 1}, 422, ["extra"]),
    ]
    for body, status, named in cases:
        resp = await client.post("/v1/point-rules", json=body, headers=auth())
        out = await problem(resp, status)
        assert sorted(e["field"] for e in out["errors"]) == sorted(named), (body, out)
    assert await _rule_rows(db) == []
    # Who may create: admin or c's own secretary; a branch secretary cannot reach c, a service or a
    # member may not manage rules at all, another organisation's secretary cannot see c.
    for token_, status in [
        (org.b1_secretary, 422),
        (org.b1_service, 403),
        (org.m1a_member, 403),
        (x_secretary, 422),
    ]:
        resp = await client.post("/v1/point-rules", json=LESSON_RULE, headers=auth(token_))
        await problem(resp, status)
    assert await _rule_rows(db) == []
    created = await post(client, "/v1/point-rules", LESSON_RULE, token=root_secretary)
    assert {k: created[k] for k in LESSON_RULE} == LESSON_RULE and created["name"] is None
    await problem(await client.post("/v1/point-rules", json=LESSON_RULE, headers=auth()), 409)
    quiz = await post(client, "/v1/point-rules", {"unit_id": "c", "code": "quiz_full", "points": 2})
    assert (quiz["daily_cap"], quiz["min_dwell_seconds"]) == (None, 0)
    rid = created["id"]
    # Reading: every secretary and service of the organisation; not members, not other organisations.
    readers: list[str | None] = [None, root_secretary, org.b1_secretary, org.b1_service]
    for token in readers:
        listed = await get(client, "/v1/point-rules", token=token)
        assert [r["code"] for r in listed["items"]] == ["lesson_read", "quiz_full"]
        assert (await get(client, f"/v1/point-rules/{rid}", token=token))["code"] == "lesson_read"
    assert (await get(client, "/v1/point-rules", token=x_secretary))["items"] == []
    await get(client, "/v1/point-rules?unit=c", token=x_secretary, status=404)
    await get(client, f"/v1/point-rules/{rid}", token=x_secretary, status=404)
    await get(client, f"/v1/point-rules/{rid}", token=org.m1a_member, status=403)
    await get(client, "/v1/point-rules/not-a-uuid", status=404)
    # Changing and deleting: only the managers.
    change = {"points": 2, "daily_cap": 4, "min_dwell_seconds": 60, "name": "每日一课"}
    before = await _rule_rows(db)
    for token, status in [(org.b1_secretary, 403), (org.b1_service, 403), (x_secretary, 404)]:
        await problem(await client.put(f"/v1/point-rules/{rid}", json=change, headers=auth(token)), status)
        await problem(await client.delete(f"/v1/point-rules/{rid}", headers=auth(token)), status)
    bad = await client.put(f"/v1/point-rules/{rid}", json={**change, "daily_cap": 1}, headers=auth())
    assert [e["field"] for e in (await problem(bad, 422))["errors"]] == ["daily_cap"]
    assert await _rule_rows(db) == before
    changed = await put(client, f"/v1/point-rules/{rid}", change, token=root_secretary)
    assert {k: changed[k] for k in change} == change and changed["code"] == "lesson_read"
    resp = await client.delete(f"/v1/point-rules/{rid}", headers=auth(root_secretary))
    assert resp.status == 204
    await get(client, f"/v1/point-rules/{rid}", status=404)


async def test_a_lesson_read_earns_once_by_every_receipt_path(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org, settings: Settings
) -> None:
    lesson = await _lesson(client, ["c"])
    ding = await _lesson(client, ["c"], kind="ding")
    # No rule yet: reads earn nothing (and leave no ledger row).
    await post(client, f"/v1/notices/{lesson}/receipts", {"type": "read"}, token=org.m2a_member, status=200)
    assert await db.fetchval("SELECT count(*) FROM point_awards") == 0
    await post(client, "/v1/point-rules", LESSON_RULE)
    # The single receipt (a member key), replayed.
    for _ in range(2):
        await post(
            client, f"/v1/notices/{lesson}/receipts", {"type": "read"}, token=org.m1a_member, status=200
        )
        await post(client, f"/v1/notices/{ding}/receipts", {"type": "read"}, token=org.m1a_member, status=200)
    # The batch (m1b twice in one call), replayed.
    items = [{"notice_id": n, "member_id": "m1b", "type": "read"} for n in (lesson, lesson, ding)]
    for _ in range(2):
        await post(client, "/v1/receipts:batch", {"receipts": items}, status=200)
    # The signed read link, opened twice.
    token = make_token(settings.link_keys()[0], lesson, "m2b", int(time.time()) + 3600)
    for _ in range(2):
        resp = await client.get(f"/r/{token}", headers={"User-Agent": "Mozilla/5.0 (Phone)"})
        assert resp.status == 200
    rows = await db.fetch("SELECT member_id, code, source, points FROM point_awards ORDER BY member_id")
    assert [tuple(r) for r in rows] == [
        (m, "lesson_read", f"notice:{lesson}", 1) for m in ("m1a", "m1b", "m2b")
    ]
    # m2a read before there was a rule: that read is done, and a replay does not earn either.
    await post(client, f"/v1/notices/{lesson}/receipts", {"type": "read"}, token=org.m2a_member, status=200)
    assert await db.fetchval("SELECT count(*) FROM point_awards WHERE member_id = 'm2a'") == 0


async def test_dwell_is_measured_by_the_server_between_open_and_read_or_close(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    lesson = await _lesson(client, ["c"])
    await post(client, "/v1/point-rules", {**LESSON_RULE, "min_dwell_seconds": 60})
    me = org.m1a_member
    async with frozen_clock(db):
        view = await post(client, f"/v1/notices/{lesson}/views", {}, token=me)
        assert (view["member_id"], view["closed_at"], view["points"]) == ("m1a", None, None)
        path = f"/v1/notices/{lesson}/views/{view['id']}"
        await advance_clock(db, 50)
        # Not read yet: a long enough view alone earns nothing.
        out = await client.patch(path, json={"visible_seconds": 50}, headers=auth(me))
        assert (await out.json())["points"] is None
        await advance_clock(db, 5)
        await post(client, f"/v1/notices/{lesson}/receipts", {"type": "read"}, token=me, status=200)
        assert await db.fetchval("SELECT count(*) FROM point_awards") == 0  # read after 55 s: too short
        # The page says it was visible 55 of the 70 s: the shorter counts, still too short.
        await advance_clock(db, 15)
        out = await client.patch(path, json={"visible_seconds": 55}, headers=auth(me))
        body = await out.json()
        assert (body["dwell_seconds"], body["points"]) == (55, None)
        # A client total beyond the server's span does not help; the server's clock does.
        await advance_clock(db, 10)
        out = await client.patch(path, json={"visible_seconds": 5000, "closed": True}, headers=auth(me))
        body = await out.json()
        assert (body["dwell_seconds"], body["points"], body["closed_at"] is not None) == (80, 1, True)
        # Closed: later reports change nothing and earn nothing more.
        await advance_clock(db, 100)
        again = await (await client.patch(path, json={"closed": True}, headers=auth(me))).json()
        assert (again["dwell_seconds"], again["points"], again["closed_at"]) == (80, 1, body["closed_at"])
        assert await db.fetchval("SELECT sum(points) FROM point_awards") == 1


async def test_views_are_the_members_own(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    to_b1 = await _lesson(client, ["b1"], token=org.b1_service)
    x_secretary = await _other_org(client)
    view = await post(client, f"/v1/notices/{to_b1}/views", {}, token=org.m1a_member)
    path = f"/v1/notices/{to_b1}/views/{view['id']}"
    before = await db.fetchval("SELECT count(*) FROM notice_views")
    # Not a recipient, someone else's member, not in reach, not a uuid: 404; no member named: 422.
    await post(client, f"/v1/notices/{to_b1}/views", {}, token=org.m2a_member, status=404)
    await post(client, f"/v1/notices/{to_b1}/views", {"member_id": "m1b"}, token=org.m1a_member, status=404)
    await post(client, f"/v1/notices/{to_b1}/views", {"member_id": "m1a"}, token=org.b2_service, status=404)
    await post(client, f"/v1/notices/{to_b1}/views", {"member_id": "m1a"}, token=x_secretary, status=403)
    await post(client, "/v1/notices/nope/views", {}, token=org.m1a_member, status=404)
    await post(client, f"/v1/notices/{to_b1}/views", {}, status=422)
    await post(client, f"/v1/notices/{to_b1}/views", {"member_id": "m1a"}, token=org.b1_service)
    assert await db.fetchval("SELECT count(*) FROM notice_views") == before + 1
    for token, body, status in [
        (org.m2a_member, {}, 404),
        (org.b1_service, {"member_id": "m1b"}, 404),  # m1b's notice, not m1b's view
        (org.b2_service, {"member_id": "m1a"}, 404),
        (org.b1_secretary, {"member_id": "m1a"}, 403),
    ]:
        await problem(await client.patch(path, json=body, headers=auth(token)), status)
    await problem(
        await client.patch(f"/v1/notices/{to_b1}/views/nope", json={}, headers=auth(org.m1a_member)), 404
    )
    resp = await client.patch(path, json={"visible_seconds": -1}, headers=auth(org.m1a_member))
    assert [e["field"] for e in (await problem(resp, 422))["errors"]] == ["visible_seconds"]
    assert await db.fetchval("SELECT count(*) FROM notice_views WHERE closed_at IS NOT NULL") == 0
    # A page opens a view each time it is shown; a script opening thousands is refused.
    await db.execute(
        "INSERT INTO notice_views (notice_id, member_id, opened_at)"
        " SELECT $1, 'm1a', now() FROM generate_series(1, 200 - $2)",
        to_b1,
        await db.fetchval("SELECT count(*) FROM notice_views WHERE member_id = 'm1a'"),
    )
    await post(client, f"/v1/notices/{to_b1}/views", {}, token=org.m1a_member, status=409)
    assert await db.fetchval("SELECT count(*) FROM notice_views WHERE member_id = 'm1a'") == 200


@pytest.fixture
async def earned(client: TestClient[Any, Any], db: asyncpg.Connection, org: Org) -> Org:
    """m1a 3 points (two actions), m1b 1, m2a and m2b none; mx (another organisation) 5."""
    await post(client, "/v1/point-rules", {**LESSON_RULE, "daily_cap": None})
    await put(client, "/v1/units/x", {"name": "Elsewhere"})
    await put(client, "/v1/members/mx", {"name": "Outsider", "units": ["x"]})
    await db.execute("INSERT INTO point_rules (root_unit_id, code, points) VALUES ('c', 'quiz_full', 2)")
    await db.execute("INSERT INTO point_rules (root_unit_id, code, points) VALUES ('x', 'quiz_full', 5)")
    assert await points.award(db, "m1a", "lesson_read", "notice:1") == 1
    assert await points.award(db, "m1a", "quiz_full", "quiz:1") == 2
    assert await points.award(db, "m1b", "lesson_read", "notice:1") == 1
    assert await points.award(db, "mx", "quiz_full", "quiz:1") == 5
    return org


async def test_a_members_points_and_who_may_see_them(client: TestClient[Any, Any], earned: Org) -> None:
    org = earned
    mine = await get(client, "/v1/members/m1a/points", token=org.m1a_member)
    assert (mine["total"], mine["today"], mine["month"], mine["timezone"]) == (3, 3, 3, "Asia/Shanghai")
    assert mine["by_code"] == [
        {"code": "lesson_read", "points": 1, "actions": 1},
        {"code": "quiz_full", "points": 2, "actions": 1},
    ]
    assert [(i["code"], i["points"]) for i in mine["items"]] == [("quiz_full", 2), ("lesson_read", 1)]
    assert mine["to"] > mine["from"] and not mine["truncated"]
    for token in (None, org.b1_secretary, org.b1_service):
        assert (await get(client, "/v1/members/m1a/points", token=token))["total"] == 3
    for token in (org.m2a_member, org.b2_service):
        await get(client, "/v1/members/m1a/points", token=token, status=404)
    await get(client, "/v1/members/nobody/points", status=404)
    # A range without today: nothing in it, today's figures unchanged.
    old = await get(client, "/v1/members/m1a/points?from=2020-01-01&to=2020-02-01")
    assert (old["total"], old["items"], old["today"]) == (0, [], 3)
    resp = await client.get("/v1/members/m1a/points?from=2020-02-01&to=2020-01-01", headers=auth())
    assert [e["field"] for e in (await problem(resp, 422))["errors"]] == ["query.to"]
    resp = await client.get("/v1/members/m1a/points?from=2020-02-30", headers=auth())
    await problem(resp, 422)


async def test_points_per_child_unit_roll_up_the_tree(client: TestClient[Any, Any], earned: Org) -> None:
    org = earned
    c = await get(client, "/v1/units/c/points")
    assert (c["total"], c["members"], c["participants"], c["organisation"]) == (4, 4, 2, "c")
    assert [
        (u["unit_id"], u["total"], u["members"], u["participants"], u["average"], u["participation"])
        for u in c["units"]
    ] == [("b1", 4, 2, 2, 2.0, 1.0), ("b2", 0, 2, 0, 0.0, 0.0)]
    b1 = await get(client, "/v1/units/b1/points", token=org.b1_secretary)
    assert [(u["unit_id"], u["total"], u["participation"]) for u in b1["units"]] == [
        ("g1a", 3, 1.0),
        ("g1b", 1, 1.0),
    ]
    g = await get(client, "/v1/units/g1a/points", token=org.b1_service)
    assert (g["total"], g["units"]) == (3, [])
    x = await get(client, "/v1/units/x/points")  # another organisation's points stay its own
    assert (x["total"], x["members"]) == (5, 1)
    for path, token, status in [
        ("/v1/units/b1/points", org.b2_service, 404),
        ("/v1/units/c/points", org.b1_secretary, 404),
        ("/v1/units/b1/points", org.m1a_member, 403),
        ("/v1/units/nope/points", None, 404),
    ]:
        await get(client, path, token=token, status=status)
