"""Oversight: a unit sees its own slice of every notice that reached it -- counts, recipients,
events, timelines, the roll-up over its children and its listing -- and nothing of its siblings.

The organisation (``tests/api/conftest.py``) plus a member shared by two branches::

    c ── b1 ── g1a (m1a), g1b (m1b, ms)
     └── b2 ── g2a (m2a, ms), g2b (m2b)
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.api.conftest import Org, issue_key, problem
from tests.conftest import auth, wait_until
from tests.helpers import get, post, put


@pytest.fixture
async def keys(client: TestClient[Any, Any], org: Org) -> dict[str, str]:
    await put(client, "/v1/members/ms", {"name": "Shared", "units": ["g1b", "g2a"]})
    return {
        "b1": org.b1_secretary,
        "b2": org.b2_service,
        "c": await issue_key(client, {"name": "c desk", "role": "secretary", "unit_id": "c"}),
        "g1a": await issue_key(client, {"name": "g1a desk", "role": "secretary", "unit_id": "g1a"}),
        "g2b": await issue_key(client, {"name": "g2b desk", "role": "secretary", "unit_id": "g2b"}),
        "member": org.m1a_member,
    }


async def _sent(
    client: TestClient[Any, Any], audience: dict[str, list[str]], token: str | None = None
) -> str:
    body = {
        "kind": "ding",
        "title": "Muster",
        "body": "Report now",
        "audience": audience,
        "channels": ["inapp"],
    }
    nid: str = (await post(client, "/v1/notices", body, token=token, status=202))["id"]

    async def active() -> bool:
        return bool((await get(client, f"/v1/notices/{nid}"))["state"] == "active")

    await wait_until(active, within=20)
    return nid


async def _read(client: TestClient[Any, Any], nid: str, member: str) -> None:
    await post(client, f"/v1/notices/{nid}/receipts", {"type": "read", "member_id": member}, status=200)


def _counts(body: dict[str, Any]) -> tuple[int, int]:
    return body["counts"]["recipients"], body["counts"]["read"]


async def test_a_committee_ding_is_seen_by_every_unit_it_reached_each_its_own_slice(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, keys: dict[str, str]
) -> None:
    nid = await _sent(client, {"units": ["c"]}, keys["c"])
    await _read(client, nid, "m1a")
    await _read(client, nid, "ms")
    # Distinct members: ms lies in both branches and counts once in the committee.
    expected = {"c": (5, 2), "b1": (3, 2), "b2": (3, 1), "g1a": (1, 1), "g2b": (1, 0)}
    for unit, want in expected.items():
        assert _counts(await get(client, f"/v1/notices/{nid}", token=keys[unit])) == want, unit
    assert _counts(await get(client, f"/v1/notices/{nid}")) == (5, 2)
    assert _counts(await get(client, f"/v1/notices/{nid}?unit=g1b", token=keys["b1"])) == (2, 1)
    body = await problem(await client.get(f"/v1/notices/{nid}?unit=g2a", headers=auth(keys["b1"])), 404)
    assert body["detail"] == "unit not found"

    # Recipients: b1's members only, and of the shared member only b1's unit.
    listed = await get(client, f"/v1/notices/{nid}/recipients", token=keys["b1"])
    assert [(i["member_id"], i["units"]) for i in listed["items"]] == [
        ("m1a", ["g1a"]),
        ("m1b", ["g1b"]),
        ("ms", ["g1b"]),
    ]
    timeline = await get(client, f"/v1/notices/{nid}/recipients/m1a", token=keys["b1"])
    assert timeline["status"] == "read"
    resp = await client.get(f"/v1/notices/{nid}/recipients/m2a", headers=auth(keys["b1"]))
    assert (await problem(resp, 404))["detail"] == "recipient not found"

    # The roll-up: b1's groups, then b1's own members; worst read rate first.
    rollup = await get(client, f"/v1/notices/{nid}/units", token=keys["b1"])
    rows = [(u["unit_id"], u["direct"], u["recipients"], u["read"], u["read_rate"]) for u in rollup["units"]]
    assert rows == [("g1b", False, 2, 1, 0.5), ("g1a", False, 1, 1, 1.0), ("b1", True, 0, 0, None)]
    g1a = rollup["units"][1]
    assert g1a["read_within"] == {"1m": 1, "5m": 0, "15m": 0, "30m": 0, "60m": 0, "later": 0}
    assert g1a["median_read"] == "1m" and g1a["last_read_at"] is not None
    assert rollup["units"][0]["median_read"] == "1m"  # half of g1b read within a minute
    committee = await get(client, f"/v1/notices/{nid}/units?parent=c")
    assert [(u["unit_id"], u["recipients"]) for u in committee["units"]] == [("b2", 3), ("b1", 3), ("c", 0)]
    resp = await client.get(f"/v1/notices/{nid}/units?parent=c", headers=auth(keys["b1"]))
    assert (await problem(resp, 404))["detail"] == "unit not found"

    # The listing: the committee's notice is in b1's list, with b1's counts.
    page = await get(client, "/v1/notices", token=keys["b1"])
    assert [(i["id"], i["counts"]["recipients"], i["counts"]["read_rate"]) for i in page["items"]] == [
        (nid, 3, round(2 / 3, 4))
    ]

    # Events: an aggregated event names members of both branches; b1 sees it naming its own only,
    # and no notice-wide event (it may name other branches' units or counts).
    await db.execute(
        "INSERT INTO notice_events (notice_id, kind, detail, members) VALUES ($1, 'not_reached', $2, $3)",
        nid,
        json.dumps({"channel": "sms", "members": 3}),
        ["m1a", "m2a", "m2b"],
    )
    await db.execute(
        "INSERT INTO notice_events (notice_id, kind, detail) VALUES ($1, 'step_fired', $2)",
        nid,
        json.dumps({"unread": 3}),
    )
    events = await get(client, f"/v1/notices/{nid}/events", token=keys["b1"])
    assert [(e["kind"], e["members"], e["detail"]) for e in events["items"]] == [
        ("not_reached", 1, {"channel": "sms", "members": 1})
    ]
    events = await get(client, f"/v1/notices/{nid}/events", token=keys["c"])
    assert [(e["kind"], e["members"]) for e in events["items"]] == [("not_reached", 3), ("step_fired", 0)]
    timeline = await get(client, f"/v1/notices/{nid}/recipients/m1a", token=keys["b1"])
    assert [(e["kind"], e["detail"]) for e in timeline["entries"] if e["type"] == "event"] == [
        ("not_reached", {"channel": "sms"})
    ]
    events = await get(client, f"/v1/notices/{nid}/events", token=keys["g2b"])
    assert [(e["kind"], e["members"]) for e in events["items"]] == [("not_reached", 1)]


async def test_a_notice_is_invisible_beside_and_below_where_it_went_bola(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, keys: dict[str, str]
) -> None:
    """b2's notice to g2b: its sibling b1 and b1's group see nothing of it on any endpoint; its
    parent sees it whole, its group its slice; member keys may not use these endpoints; a
    revoked key is refused."""
    nid = await _sent(client, {"units": ["g2b"]}, keys["b2"])
    paths = [
        f"/v1/notices/{nid}",
        f"/v1/notices/{nid}/recipients",
        f"/v1/notices/{nid}/recipients/m2b",
        f"/v1/notices/{nid}/events",
        f"/v1/notices/{nid}/units",
    ]
    for who in ("b1", "g1a"):
        for path in paths:
            body = await problem(await client.get(path, headers=auth(keys[who])), 404)
            assert body["detail"] == "notice not found", (who, path)
        assert (await get(client, "/v1/notices", token=keys[who]))["items"] == []
        resp = await client.post(f"/v1/notices/{nid}/recall", headers=auth(keys[who]))
        await problem(resp, 404)
    for who in ("c", "b2", "g2b"):
        for path in paths:
            await get(client, path, token=keys[who])
        assert [i["id"] for i in (await get(client, "/v1/notices", token=keys[who]))["items"]] == [nid]
    # The group it reached may not recall what its branch sent.
    await problem(await client.post(f"/v1/notices/{nid}/recall", headers=auth(keys["g2b"])), 404)
    for path in [*paths, "/v1/notices"]:
        await problem(await client.get(path, headers=auth(keys["member"])), 403)
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE name = 'g2b desk'")
    resp = await client.delete(f"/v1/api-keys/{key_id}", headers=auth())
    assert resp.status == 204
    for path in [*paths, "/v1/notices"]:
        await problem(await client.get(path, headers=auth(keys["g2b"])), 401)


async def test_a_shared_member_lets_the_other_branch_see_only_that_member(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, keys: dict[str, str]
) -> None:
    nid = await _sent(client, {"units": ["g2a"]}, keys["b2"])
    assert _counts(await get(client, f"/v1/notices/{nid}", token=keys["b1"])) == (1, 0)
    listed = await get(client, f"/v1/notices/{nid}/recipients", token=keys["b1"])
    assert [(i["member_id"], i["units"]) for i in listed["items"]] == [("ms", ["g1b"])]
    rollup = await get(client, f"/v1/notices/{nid}/units", token=keys["b1"])
    assert [(u["unit_id"], u["recipients"]) for u in rollup["units"]] == [("g1b", 1), ("g1a", 0), ("b1", 0)]
    assert "g2a" not in json.dumps(rollup) and "m2a" not in json.dumps(listed)
    await problem(await client.get(f"/v1/notices/{nid}/recipients/m2a", headers=auth(keys["b1"])), 404)
    assert _counts(await get(client, f"/v1/notices/{nid}", token=keys["b2"])) == (2, 0)


async def test_the_listing_filters_and_pages_newest_first(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, keys: dict[str, str]
) -> None:
    ids = [await _sent(client, {"units": ["b1"]}, keys["b1"]) for _ in range(3)]
    other = await _sent(client, {"units": ["g1a"]}, keys["c"])
    await db.execute("UPDATE notices SET title = 'Flood 100%' WHERE id = $1", ids[0])
    seen: list[str] = []
    cursor = ""
    while True:
        page = await get(client, f"/v1/notices?limit=2{cursor}", token=keys["b1"])
        seen += [i["id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [other, *reversed(ids)]
    found = await get(client, "/v1/notices?q=100%25", token=keys["b1"])
    assert [i["id"] for i in found["items"]] == [ids[0]]
    assert (await get(client, "/v1/notices?q=10_%25", token=keys["b1"]))["items"] == []
    g1a = await get(client, "/v1/notices?unit=g1a", token=keys["b1"])
    assert [(i["id"], i["counts"]["recipients"]) for i in g1a["items"]][0] == (other, 1)
    assert (await get(client, "/v1/notices?state=recalled", token=keys["b1"]))["items"] == []
    assert (await get(client, "/v1/notices?kind=lesson", token=keys["b1"]))["items"] == []
    resp = await client.get("/v1/notices?unit=b2", headers=auth(keys["b1"]))
    assert (await problem(resp, 404))["detail"] == "unit not found"
    resp = await client.get("/v1/notices?cursor=bm9wZQ", headers=auth(keys["b1"]))
    await problem(resp, 422, [{"field": "query.cursor", "message": "not a cursor this API returned"}])
    everything = await get(client, "/v1/notices")
    assert [i["id"] for i in everything["items"]] == [other, *reversed(ids)]


async def test_a_scheduled_notice_is_listed_where_it_was_created_before_it_fans_out(
    client: TestClient[Any, Any], db: asyncpg.Connection, keys: dict[str, str]
) -> None:
    body = {
        "kind": "notice",
        "title": "Tomorrow",
        "body": "Drill",
        "audience": {"units": ["g1a"]},
        "send_at": "2099-01-01T08:00:00Z",
    }
    nid = (await post(client, "/v1/notices", body, token=keys["g1a"], status=202))["id"]
    for who in ("g1a", "b1", "c"):
        page = await get(client, "/v1/notices?state=scheduled", token=keys[who])
        assert [(i["id"], i["counts"]["recipients"], i["counts"]["read_rate"]) for i in page["items"]] == [
            (nid, 0, None)
        ], who
    assert (await get(client, "/v1/notices", token=keys["b2"]))["items"] == []
    await problem(await client.get(f"/v1/notices/{nid}", headers=auth(keys["b2"])), 404)
