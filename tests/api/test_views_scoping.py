"""Who may use the secretary's views, and what each caller sees of them: roll-call, remind-now
and member history, for a sibling branch, the parent, a child unit, a member shared between
branches, a member key and a revoked key.

The organisation (see ``tests/api/conftest.py``), plus ``ms``, a member of g1a and of g2a::

    c ── b1 ── g1a (m1a, ms), g1b (m1b)
     └── b2 ── g2a (m2a, ms), g2b (m2b)
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.db import escalations
from notifier.settings import Settings
from notifier.workers.fanout import fanout_notice
from tests.api.conftest import Org, issue_key, problem, snapshot
from tests.conftest import auth, wait_until
from tests.helpers import get, post, put, worker_deps


@dataclass(frozen=True)
class Keys:
    org: Org
    committee: str  # the parent of both branches
    g1a: str  # a child of b1
    g1b: str
    ms_member: str
    revoked: str
    b1_notice: str  # from b1 to all of b1: m1a, m1b, ms
    g1b_notice: str  # from b1 to g1b only: m1b
    admin_notice: str  # from an admin to everyone


async def _active(client: TestClient[Any, Any], notice_id: str) -> None:
    async def ready() -> bool:
        return bool((await get(client, f"/v1/notices/{notice_id}"))["state"] == "active")

    await wait_until(ready, within=20)


async def _notice(client: TestClient[Any, Any], token: str | None, units: list[str], title: str) -> str:
    body = {"kind": "ding", "title": title, "body": "Report now", "audience": {"units": units}}
    created = await post(client, "/v1/notices", body, token=token, status=202)
    await _active(client, created["id"])
    return str(created["id"])


@pytest.fixture
async def keys(client: TestClient[Any, Any], worker: None, org: Org) -> Keys:
    await put(client, "/v1/members/ms", {"name": "Shared officer", "units": ["g1a", "g2a"]})
    gone = await post(client, "/v1/api-keys", {"name": "old desk", "role": "secretary", "unit_id": "b1"})
    assert (await client.delete(f"/v1/api-keys/{gone['id']}", headers=auth())).status == 204
    return Keys(
        org=org,
        committee=await issue_key(client, {"name": "c desk", "role": "secretary", "unit_id": "c"}),
        g1a=await issue_key(client, {"name": "g1a desk", "role": "secretary", "unit_id": "g1a"}),
        g1b=await issue_key(client, {"name": "g1b desk", "role": "secretary", "unit_id": "g1b"}),
        ms_member=await issue_key(client, {"name": "ms phone", "role": "member", "member_id": "ms"}),
        revoked=gone["token"],
        b1_notice=await _notice(client, org.b1_secretary, ["b1"], "Branch 1 muster"),
        g1b_notice=await _notice(client, org.b1_secretary, ["g1b"], "Group 1b muster"),
        admin_notice=await _notice(client, None, ["c"], "Committee muster"),
    )


async def _roll(client: TestClient[Any, Any], nid: str, token: str, query: str = "") -> list[tuple[str, str]]:
    page = await get(client, f"/v1/notices/{nid}/roll-call{query}", token=token)
    assert page["next_cursor"] is None
    return [(g["unit_id"], r["member_id"]) for g in page["groups"] for r in g["recipients"]]


# --- roll-call ------------------------------------------------------------------------------------


async def test_roll_call_shows_each_caller_its_own_slice_and_no_other_unit(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    nid = keys.b1_notice
    assert await _roll(client, nid, keys.org.b1_secretary) == [("g1a", "m1a"), ("g1a", "ms"), ("g1b", "m1b")]
    # The parent sees the whole notice; ms is in g2a too, which is the committee's as well.
    assert await _roll(client, nid, keys.committee) == [
        ("g1a", "m1a"),
        ("g1a", "ms"),
        ("g1b", "m1b"),
        ("g2a", "ms"),
    ]
    # A child sees the notice of the branch above it, but only its own members.
    assert await _roll(client, nid, keys.g1a) == [("g1a", "m1a"), ("g1a", "ms")]
    # The sibling branch sees it only because it reached ms, and sees ms under g2a only.
    assert await _roll(client, nid, keys.org.b2_service) == [("g2a", "ms")]
    assert await _roll(client, nid, keys.org.b1_secretary, "?unit=g1b") == [("g1b", "m1b")]
    # An admin's notice to everyone: each branch sees its own members.
    assert await _roll(client, keys.admin_notice, keys.org.b2_service) == [
        ("g2a", "m2a"),
        ("g2a", "ms"),
        ("g2b", "m2b"),
    ]


async def test_roll_call_refuses_whoever_may_not_see_it(client: TestClient[Any, Any], keys: Keys) -> None:
    nid = keys.g1b_notice  # reached m1b only
    for token in (keys.org.b2_service, keys.g1a):  # a sibling branch, a sibling group
        body = await problem(await client.get(f"/v1/notices/{nid}/roll-call", headers=auth(token)), 404)
        assert body["detail"] == "notice not found"
        csv = await client.get(f"/v1/notices/{nid}/roll-call", headers={**auth(token), "Accept": "text/csv"})
        await problem(csv, 404)
    # A unit outside the caller's reach, even on a notice it sees.
    body = await problem(
        await client.get(
            f"/v1/notices/{keys.b1_notice}/roll-call?unit=g2a", headers=auth(keys.org.b1_secretary)
        ),
        404,
    )
    assert body["detail"] == "unit not found"
    await problem(
        await client.get(f"/v1/notices/{keys.b1_notice}/roll-call?unit=g1b", headers=auth(keys.g1a)), 404
    )
    await problem(await client.get(f"/v1/notices/{nid}/roll-call", headers=auth(keys.org.m1a_member)), 403)
    await problem(await client.get(f"/v1/notices/{nid}/roll-call", headers=auth(keys.revoked)), 401)
    await problem(await client.get("/v1/notices/not-a-uuid/roll-call", headers=auth()), 404)


# --- remind-now -----------------------------------------------------------------------------------


async def _reminded(db: asyncpg.Connection, nid: str) -> list[str]:
    rows = await db.fetch(
        "SELECT member_id FROM deliveries WHERE notice_id = $1 AND step > 0 ORDER BY member_id", nid
    )
    return [r["member_id"] for r in rows]


async def test_remind_now_reaches_only_the_unread_of_the_callers_slice(
    client: TestClient[Any, Any], db: asyncpg.Connection, keys: Keys
) -> None:
    nid = keys.b1_notice
    await post(client, f"/v1/notices/{nid}/receipts", {"type": "read", "member_id": "m1a"}, status=200)
    sibling = await post(
        client, f"/v1/notices/{nid}/remind", {"channels": ["inapp"]}, token=keys.org.b2_service, status=202
    )
    assert sibling["reminded"] == {"inapp": 1} and sibling["unit"] is None
    assert await _reminded(db, nid) == ["ms"]
    child = await post(
        client, f"/v1/notices/{nid}/remind", {"channels": ["inapp"]}, token=keys.g1a, status=202
    )
    assert child["reminded"] == {"inapp": 1}  # ms again (a press of its own); m1a has read
    assert await _reminded(db, nid) == ["ms", "ms"]
    own = await post(
        client,
        f"/v1/notices/{nid}/remind",
        {"unit": "g1b", "channels": ["inapp"]},
        token=keys.org.b1_secretary,
        status=202,
    )
    assert own["reminded"] == {"inapp": 1} and own["unit"] == "g1b"
    assert await _reminded(db, nid) == ["m1b", "ms", "ms"]


async def test_remind_now_refuses_whoever_may_not_see_it_and_writes_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection, keys: Keys
) -> None:
    before = await snapshot(db)
    events = await db.fetchval("SELECT count(*) FROM notice_events")
    body = {"channels": ["inapp"]}
    for token in (keys.org.b2_service, keys.g1a):
        resp = await client.post(f"/v1/notices/{keys.g1b_notice}/remind", json=body, headers=auth(token))
        assert (await problem(resp, 404))["detail"] == "notice not found"
    resp = await client.post(
        f"/v1/notices/{keys.b1_notice}/remind", json={**body, "unit": "g1b"}, headers=auth(keys.g1a)
    )
    assert (await problem(resp, 404))["detail"] == "unit not found"
    resp = await client.post(
        f"/v1/notices/{keys.b1_notice}/remind",
        json={**body, "unit": "g2a"},
        headers=auth(keys.org.b1_secretary),
    )
    await problem(resp, 404)
    resp = await client.post(f"/v1/notices/{keys.b1_notice}/remind", json=body, headers=auth(keys.ms_member))
    await problem(resp, 403)
    resp = await client.post(f"/v1/notices/{keys.b1_notice}/remind", json=body, headers=auth(keys.revoked))
    await problem(resp, 401)
    assert await snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM notice_events") == events


# --- member history -------------------------------------------------------------------------------


async def test_member_history_is_visible_where_the_member_belongs(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    titles = ["Committee muster", "Branch 1 muster"]  # newest first
    for token in (None, keys.committee, keys.org.b1_secretary, keys.org.b2_service, keys.g1a, keys.ms_member):
        page = await get(client, "/v1/members/ms/notices", token=token)
        assert [i["title"] for i in page["items"]] == titles, token
    for token in (keys.g1b, keys.org.m1a_member):  # ms is not in g1b; another member
        await problem(await client.get("/v1/members/ms/notices", headers=auth(token)), 404)
    await problem(await client.get("/v1/members/m1a/notices", headers=auth(keys.org.b2_service)), 404)
    await problem(await client.get("/v1/members/nobody/notices", headers=auth()), 404)
    await problem(await client.get("/v1/members/ms/notices", headers=auth(keys.revoked)), 401)


async def test_an_escalation_summary_in_a_shared_members_history_is_seen_by_its_own_branch_only(
    client: TestClient[Any, Any], keys: Keys, settings: Settings
) -> None:
    """b1's escalation tells ms (also a member of b2) how b1's notice is going: b2, and g1a below
    b1, must not read that in ms's history nor open it; b1, the committee, admins and ms do."""
    summary = str(uuid.uuid4())
    async with worker_deps(settings) as deps:
        async with deps.pool.acquire() as conn:
            await escalations.insert_summary(
                conn,
                summary,
                title="未读 3/3: Branch 1 muster",
                body="3 of 3 recipients have not read",
                members=["ms"],
                channels=["inapp"],
                scope_unit_id="b1",
                parent_notice_id=keys.b1_notice,
                parent_step=1,
            )
        await fanout_notice(deps, summary)  # (or the running worker's reconciler does it first)
    await _active(client, summary)
    titles = ["Committee muster", "Branch 1 muster"]
    for token in (None, keys.committee, keys.org.b1_secretary, keys.ms_member):
        page = await get(client, "/v1/members/ms/notices", token=token)
        assert [i["title"] for i in page["items"]] == ["未读 3/3: Branch 1 muster", *titles], token
        assert page["items"][0]["summary"] is True
    for token in (keys.org.b2_service, keys.g1a):
        page = await get(client, "/v1/members/ms/notices", token=token)
        assert [i["title"] for i in page["items"]] == titles, token
        await problem(await client.get(f"/v1/notices/{summary}", headers=auth(token)), 404)
        listed = await get(client, "/v1/notices", token=token)
        assert summary not in [n["id"] for n in listed["items"]]
    assert (await get(client, f"/v1/notices/{summary}", token=keys.org.b1_secretary))["id"] == summary


async def test_member_history_says_what_was_read_when_and_pages(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    await post(
        client, f"/v1/notices/{keys.b1_notice}/receipts", {"type": "read", "member_id": "ms"}, status=200
    )
    await post(client, f"/v1/notices/{keys.admin_notice}/remind", {"channels": ["inapp"]}, status=202)
    page = await get(client, "/v1/members/ms/notices")
    newest, older = page["items"]
    assert (newest["notice_id"], newest["status"], newest["read_at"], newest["reminders"]) == (
        keys.admin_notice,
        "delivered",
        None,
        1,
    )
    assert older["notice_id"] == keys.b1_notice and older["status"] == "read" and older["read_via"] == "api"
    assert older["seconds_to_read"] is not None and older["seconds_to_read"] >= 0
    assert older["delivered_at"] is not None and older["reminders"] == 0
    first = await get(client, "/v1/members/ms/notices?limit=1")
    assert [i["notice_id"] for i in first["items"]] == [keys.admin_notice]
    rest = await get(client, f"/v1/members/ms/notices?limit=1&cursor={first['next_cursor']}")
    assert [i["notice_id"] for i in rest["items"]] == [keys.b1_notice] and rest["next_cursor"] is None
    received = older["received_at"]
    only_older = await get(client, f"/v1/members/ms/notices?to={newest['received_at'].replace('+', '%2B')}")
    assert [i["notice_id"] for i in only_older["items"]] == [keys.b1_notice]
    since = await get(client, f"/v1/members/ms/notices?from={received.replace('+', '%2B')}&kind=ding")
    assert len(since["items"]) == 2
    assert (await get(client, "/v1/members/ms/notices?kind=lesson"))["items"] == []
    bad = await client.get(
        "/v1/members/ms/notices?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", headers=auth()
    )
    await problem(bad, 422)


# --- unit reports ---------------------------------------------------------------------------------


async def test_a_unit_report_is_of_the_callers_units_and_counts_each_member_once(
    client: TestClient[Any, Any], db: asyncpg.Connection, keys: Keys
) -> None:
    today = await db.fetchval("SELECT (notifier_now() AT TIME ZONE 'Asia/Shanghai')::date")
    q = f"from={today}&to={today + dt.timedelta(days=1)}&bucket=day"

    async def report(unit: str, token: str) -> dict[str, tuple[int, int]]:
        body = await get(client, f"/v1/units/{unit}/report?{q}", token=token)
        return {u["unit_id"]: (u["notices"], u["recipients"]) for u in body["units"]}

    # ms (g1a and g2a) counts once in the committee; the b1 notice reached b2 through ms only.
    assert await report("c", keys.committee) == {"c": (3, 9), "b1": (3, 7), "b2": (2, 4)}
    assert await report("b1", keys.committee) == {"b1": (3, 7), "g1a": (2, 4), "g1b": (3, 3)}
    assert await report("b1", keys.org.b1_secretary) == await report("b1", keys.committee)
    assert await report("b2", keys.org.b2_service) == {"b2": (2, 4), "g2a": (2, 3), "g2b": (1, 1)}
    assert await report("g1a", keys.g1a) == {"g1a": (2, 4)}
    text = await (await client.get(f"/v1/units/b2/report?{q}", headers=auth(keys.org.b2_service))).text()
    assert "b1" not in text and "g1" not in text
    # A sibling branch or group, the parent of one's unit: as if it did not exist.
    for unit, token in (
        ("b1", keys.org.b2_service),
        ("g1a", keys.org.b2_service),
        ("b1", keys.g1a),
        ("g1b", keys.g1a),
        ("c", keys.org.b1_secretary),
    ):
        body = await problem(await client.get(f"/v1/units/{unit}/report?{q}", headers=auth(token)), 404)
        assert body["detail"] == "unit not found", (unit, token)
    for token in (keys.ms_member, keys.org.m1a_member):
        await problem(await client.get(f"/v1/units/g1a/report?{q}", headers=auth(token)), 403)
    await problem(await client.get(f"/v1/units/b1/report?{q}", headers=auth(keys.revoked)), 401)
