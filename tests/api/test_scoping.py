"""What each principal can see and touch. A service or secretary key is bound to a unit and sees
its subtree only; a member key sees one member. Anything outside answers 404, as if absent.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.conftest import Org, problem, snapshot
from tests.conftest import auth, wait_until
from tests.helpers import get, post, put


def _notice(audience: dict[str, list[str]], title: str = "Muster") -> dict[str, Any]:
    return {"kind": "ding", "title": title, "body": "Report now", "audience": audience}


async def _active(client: TestClient[Any, Any], notice_id: str) -> None:
    async def ready() -> bool:
        n = await get(client, f"/v1/notices/{notice_id}")
        return bool(n["state"] == "active")

    await wait_until(ready, within=20)


async def _notice_by(client: TestClient[Any, Any], token: str | None, audience: dict[str, list[str]]) -> str:
    created = await post(client, "/v1/notices", _notice(audience), token=token, status=202)
    notice_id = created["id"]
    assert isinstance(notice_id, str)
    return notice_id


# --- units ----------------------------------------------------------------------------------------


async def test_branch_key_sees_only_its_own_units(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    b1 = org.b1_service
    for unit in ("b1", "g1a", "g1b"):
        assert (await get(client, f"/v1/units/{unit}", token=b1))["id"] == unit
    for unit in ("b2", "g2a", "g2b", "c", "nope"):
        resp = await client.get(f"/v1/units/{unit}", headers=auth(b1))
        body = await problem(resp, 404)
        assert body["detail"] == "unit not found"
    listed = await get(client, "/v1/units", token=b1)
    assert [u["id"] for u in listed["items"]] == ["b1", "g1a", "g1b"]
    assert listed["next_cursor"] is None


async def test_branch_key_cannot_touch_other_units(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    b1 = org.b1_service
    before = await snapshot(db)
    for unit, parent in (("b2", "c"), ("b2", "b1"), ("g2a", "b1"), ("g2a", "b2"), ("c", None)):
        resp = await client.put(
            f"/v1/units/{unit}", json={"name": "Mine now", "parent_id": parent}, headers=auth(b1)
        )
        await problem(resp, 404)
    # Creating: not under another branch, not above or beside its own unit.
    resp = await client.put("/v1/units/new", json={"name": "New", "parent_id": "b2"}, headers=auth(b1))
    await problem(resp, 422, [{"field": "parent_id", "message": "unknown unit"}])
    resp = await client.put("/v1/units/new", json={"name": "New", "parent_id": "c"}, headers=auth(b1))
    await problem(resp, 422, [{"field": "parent_id", "message": "unknown unit"}])
    resp = await client.put("/v1/units/new", json={"name": "New"}, headers=auth(b1))
    await problem(
        resp, 422, [{"field": "parent_id", "message": "units you create must lie below your own unit"}]
    )
    # Nor move one of its own units out of its reach.
    resp = await client.put("/v1/units/g1a", json={"name": "G", "parent_id": "b2"}, headers=auth(b1))
    await problem(resp, 422, [{"field": "parent_id", "message": "unknown unit"}])
    resp = await client.put("/v1/units/g1a", json={"name": "G"}, headers=auth(b1))
    await problem(
        resp, 422, [{"field": "parent_id", "message": "units you create must lie below your own unit"}]
    )
    assert await snapshot(db) == before
    # Below its own unit it may create and re-parent.
    created = await put(client, "/v1/units/g1c", {"name": "G1c", "parent_id": "b1"}, token=b1)
    assert created["parent_id"] == "b1"
    moved = await put(client, "/v1/units/g1c", {"name": "G1c", "parent_id": "g1a"}, token=b1)
    assert moved["parent_id"] == "g1a"


async def test_branch_key_cannot_move_its_own_unit(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    b1 = org.b1_service
    before = await snapshot(db)
    resp = await client.put("/v1/units/b1", json={"name": "B1"}, headers=auth(b1))
    body = await problem(resp, 403)
    assert body["detail"] == "a key cannot move the unit it is bound to"
    resp = await client.put("/v1/units/b1", json={"name": "B1", "parent_id": "b2"}, headers=auth(b1))
    await problem(resp, 422, [{"field": "parent_id", "message": "unknown unit"}])
    resp = await client.put("/v1/units/b1", json={"name": "B1", "parent_id": "g1a"}, headers=auth(b1))
    await problem(
        resp,
        422,
        [{"field": "parent_id", "message": "would create a cycle: the parent lies below this unit"}],
    )
    assert await snapshot(db) == before
    assert await db.fetchval("SELECT parent_id FROM units WHERE id = 'b1'") == "c"


async def test_branch_key_may_rename_its_own_unit_in_place(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """Read-modify-write of its own unit: the parent it reads back is outside its reach, but
    leaving it unchanged is not a move."""
    b1 = org.b1_service
    current = await get(client, "/v1/units/b1", token=b1)
    assert current["parent_id"] == "c"
    renamed = await put(
        client, "/v1/units/b1", {"name": "Branch One", "parent_id": current["parent_id"]}, token=b1
    )
    assert (renamed["name"], renamed["parent_id"]) == ("Branch One", "c")
    row = await db.fetchrow("SELECT name, parent_id FROM units WHERE id = 'b1'")
    assert row is not None
    assert (row["name"], row["parent_id"]) == ("Branch One", "c")


# --- members and contacts -------------------------------------------------------------------------


async def test_branch_key_cannot_see_or_touch_other_members(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    b1 = org.b1_service
    assert (await get(client, "/v1/members/m1a", token=b1))["units"] == ["g1a"]
    assert (await get(client, "/v1/members/m1a/contacts", token=b1)) == {"items": []}
    assert (await get(client, "/v1/members/m1a/inbox", token=b1)) == {"items": [], "next_cursor": None}
    before = await snapshot(db)
    for path in ("/v1/members/m2a", "/v1/members/m2a/contacts", "/v1/members/m2a/inbox", "/v1/members/nope"):
        resp = await client.get(path, headers=auth(b1))
        body = await problem(resp, 404)
        assert body["detail"] == "member not found"
    resp = await client.post(
        "/v1/members/m2a/contacts",
        json={"channel": "webhook", "target": "https://example.org/h"},
        headers=auth(b1),
    )
    await problem(resp, 404)
    resp = await client.put("/v1/members/m2a", json={"name": "Taken", "units": ["g1a"]}, headers=auth(b1))
    await problem(resp, 422, [{"field": "id", "message": "this member id is used outside your units"}])
    resp = await client.put("/v1/members/m1a", json={"name": "Moved", "units": ["g2a"]}, headers=auth(b1))
    await problem(resp, 422, [{"field": "units[0]", "message": "unknown unit"}])
    batch = {
        "members": [{"id": "n1", "name": "N", "units": ["g1a"]}, {"id": "m2b", "name": "X", "units": ["g1b"]}]
    }
    resp = await client.post("/v1/members:batch", json=batch, headers=auth(b1))
    await problem(
        resp, 422, [{"field": "members[1].id", "message": "this member id is used outside your units"}]
    )
    assert await snapshot(db) == before


async def test_shared_member_shows_only_units_in_reach(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """A member of both branches: each branch key sees the member, with its own units only, but
    neither may change what they share (profile, contacts, keys): only an admin can."""
    await put(
        client, "/v1/members/mx", {"name": "Shared", "units": ["g1a", "g2a"], "phone": "+8613800000001"}
    )
    assert (await get(client, "/v1/members/mx", token=org.b1_service))["units"] == ["g1a"]
    assert (await get(client, "/v1/members/mx", token=org.b2_service))["units"] == ["g2a"]
    b2_key = await post(client, "/v1/api-keys", {"name": "mx phone", "role": "member", "member_id": "mx"})
    before = await snapshot(db)
    b1 = auth(org.b1_service)
    resp = await client.put(
        "/v1/members/mx", json={"name": "Hijacked", "units": ["g1b"], "phone": "+8613800000002"}, headers=b1
    )
    await problem(
        resp,
        422,
        [
            {
                "field": "id",
                "message": "this member also belongs to units outside your reach; "
                "only an admin may change it",
            }
        ],
    )
    resp = await client.post(
        "/v1/members/mx/contacts", json={"channel": "webhook", "target": "http://127.0.0.1:1/x"}, headers=b1
    )
    await problem(resp, 403)
    resp = await client.post(
        "/v1/api-keys", json={"name": "steal", "role": "member", "member_id": "mx"}, headers=b1
    )
    await problem(resp, 422)
    resp = await client.delete(f"/v1/api-keys/{b2_key['id']}", headers=b1)
    await problem(resp, 404)
    assert await snapshot(db) == before
    assert (await get(client, "/v1/members/mx"))["units"] == ["g1a", "g2a"]


# --- notices --------------------------------------------------------------------------------------


async def test_branch_key_cannot_see_other_notices(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    b1 = org.b1_service
    from_admin = await _notice_by(client, None, {"units": ["c"]})
    from_b2 = await _notice_by(client, org.b2_service, {"units": ["b2"]})
    from_b1 = await _notice_by(client, b1, {"units": ["b1"]})
    for nid in (from_admin, from_b2, from_b1):
        await _active(client, nid)
    assert (await get(client, f"/v1/notices/{from_b1}", token=b1))["counts"]["recipients"] == 2
    # The committee's notice reached b1's members: b1 sees it, and only its own slice.
    assert (await get(client, f"/v1/notices/{from_admin}", token=b1))["counts"]["recipients"] == 2
    before = await snapshot(db)
    for path in (f"/v1/notices/{from_b2}", f"/v1/notices/{from_b2}/recipients"):
        resp = await client.get(path, headers=auth(b1))
        body = await problem(resp, 404)
        assert body["detail"] == "notice not found"
    for nid in (from_admin, from_b2):
        # m1a is a recipient of the admin's notice, but b1 may not acknowledge it.
        for member in ("m1a", "m2a"):
            resp = await client.post(
                f"/v1/notices/{nid}/receipts", json={"type": "read", "member_id": member}, headers=auth(b1)
            )
            body = await problem(resp, 404)
            assert body["detail"] == "notice not found"
    # On its own notice, b1 cannot name a member outside its units either.
    resp = await client.post(
        f"/v1/notices/{from_b1}/receipts", json={"type": "read", "member_id": "m2a"}, headers=auth(b1)
    )
    body = await problem(resp, 404)
    assert body["detail"] == "recipient not found"
    resp = await client.get(f"/v1/notices/{from_b1}/recipients?unit=g2a", headers=auth(b1))
    body = await problem(resp, 404)
    assert body["detail"] == "unit not found"
    assert await snapshot(db) == before


async def test_branch_key_audience_is_limited_to_its_units(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    b1 = org.b1_service
    before = await snapshot(db)
    audience = {"units": ["g1a", "b2", "c", "g2b"], "members": ["m1b", "m2a"]}
    resp = await client.post("/v1/notices", json=_notice(audience), headers=auth(b1))
    await problem(
        resp,
        422,
        [
            {"field": "audience.units[1]", "message": "unknown unit"},
            {"field": "audience.units[2]", "message": "unknown unit"},
            {"field": "audience.units[3]", "message": "unknown unit"},
            {"field": "audience.members[1]", "message": "unknown member"},
        ],
    )
    assert await snapshot(db) == before
    created = await post(
        client, "/v1/notices", _notice({"units": ["g1a"], "members": ["m1b"]}), token=b1, status=202
    )
    row = await db.fetchrow(
        "SELECT scope_unit_id, created_by::text AS by FROM notices WHERE id = $1::uuid", created["id"]
    )
    assert row is not None
    b1_key_id = await db.fetchval("SELECT id::text FROM api_keys WHERE name = 'b1 app'")
    assert (row["scope_unit_id"], row["by"]) == ("b1", b1_key_id)


async def test_recipients_show_only_units_in_reach(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    await put(client, "/v1/members/mx", {"name": "Shared", "units": ["g1a", "g2a"]})
    nid = await _notice_by(client, org.b1_service, {"units": ["g1a"]})
    await _active(client, nid)
    page = await get(client, f"/v1/notices/{nid}/recipients", token=org.b1_service)
    assert [(r["member_id"], r["units"]) for r in page["items"]] == [("m1a", ["g1a"]), ("mx", ["g1a"])]
    page = await get(client, f"/v1/notices/{nid}/recipients")
    assert [(r["member_id"], r["units"]) for r in page["items"]] == [("m1a", ["g1a"]), ("mx", ["g1a", "g2a"])]


async def test_branch_key_cannot_issue_keys_outside_its_units(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    b1 = org.b1_service
    before = await snapshot(db)
    resp = await client.post(
        "/v1/api-keys", json={"name": "x", "role": "secretary", "unit_id": "b2"}, headers=auth(b1)
    )
    await problem(resp, 422, [{"field": "unit_id", "message": "unknown unit"}])
    resp = await client.post(
        "/v1/api-keys", json={"name": "x", "role": "member", "member_id": "m2a"}, headers=auth(b1)
    )
    await problem(resp, 422, [{"field": "member_id", "message": "unknown member"}])
    b2_key = await db.fetchval("SELECT id::text FROM api_keys WHERE name = 'b2 app'")
    resp = await client.delete(f"/v1/api-keys/{b2_key}", headers=auth(b1))
    await problem(resp, 404)
    assert await snapshot(db) == before


# --- secretary and member keys --------------------------------------------------------------------


async def test_secretary_reads_status_but_cannot_change_the_organisation(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    sec = org.b1_secretary
    nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    other = await _notice_by(client, org.b2_service, {"units": ["b2"]})
    for notice_id in (nid, other):
        await _active(client, notice_id)
    status = await get(client, f"/v1/notices/{nid}", token=sec)
    assert (status["id"], status["counts"]["recipients"], status["counts"]["delivered"]) == (nid, 2, 2)
    page = await get(client, f"/v1/notices/{nid}/recipients?status=unread", token=sec)
    assert [r["member_id"] for r in page["items"]] == ["m1a", "m1b"]
    assert (await get(client, "/v1/units/g1a", token=sec))["id"] == "g1a"
    assert (await get(client, "/v1/members/m1a", token=sec))["id"] == "m1a"
    before = await snapshot(db)
    attempts = [
        ("PUT", "/v1/units/g1c", {"name": "G1c", "parent_id": "b1"}),
        ("PUT", "/v1/units/g1a", {"name": "Renamed", "parent_id": "b1"}),
        ("PUT", "/v1/members/n1", {"name": "N", "units": ["g1a"]}),
        ("POST", "/v1/members:batch", {"members": [{"id": "n1", "name": "N", "units": ["g1a"]}]}),
        ("POST", "/v1/members/m1a/contacts", {"channel": "webhook", "target": "https://example.org/h"}),
        ("POST", "/v1/api-keys", {"name": "x", "role": "secretary", "unit_id": "b1"}),
        ("POST", f"/v1/notices/{nid}/receipts", {"type": "read", "member_id": "m1a"}),
    ]
    for method, path, payload in attempts:
        resp = await client.request(method, path, json=payload, headers=auth(sec))
        body = await problem(resp, 403)
        assert body["detail"] == "a secretary key may not do this"
    # Nor does it see beyond its unit.
    for path in (
        f"/v1/notices/{other}",
        f"/v1/notices/{other}/recipients",
        "/v1/units/b2",
        "/v1/members/m2a",
    ):
        await problem(await client.get(path, headers=auth(sec)), 404)
    assert await snapshot(db) == before


async def test_member_key_sees_only_its_own_inbox(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    me = org.m1a_member
    nid = await _notice_by(client, None, {"units": ["c"]})
    await _active(client, nid)
    inbox = await get(client, "/v1/members/m1a/inbox", token=me)
    assert [(i["notice_id"], i["read"]) for i in inbox["items"]] == [(nid, False)]
    assert (await get(client, "/v1/members/m1a", token=me))["id"] == "m1a"
    for path in (
        "/v1/members/m1b/inbox",
        "/v1/members/m2a/inbox",
        "/v1/members/m1b",
        "/v1/members/nope/inbox",
    ):
        resp = await client.get(path, headers=auth(me))
        body = await problem(resp, 404)
        assert body["detail"] == "member not found"
    for path in (
        f"/v1/notices/{nid}",
        f"/v1/notices/{nid}/recipients",
        "/v1/units/g1a",
        "/v1/members/m1a/contacts",
    ):
        resp = await client.get(path, headers=auth(me))
        body = await problem(resp, 403)
        assert body["detail"] == "a member key may not do this"


async def test_member_receipts_are_idempotent_and_self_only(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    me = org.m1a_member
    to_all = await _notice_by(client, None, {"units": ["c"]})
    to_b2 = await _notice_by(client, None, {"units": ["b2"]})
    for nid in (to_all, to_b2):
        await _active(client, nid)

    resp = await client.post(f"/v1/notices/{to_all}/receipts", json={"type": "read"}, headers=auth(me))
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    assert (first["notice_id"], first["member_id"], first["type"], first["recorded"]) == (
        to_all,
        "m1a",
        "read",
        True,
    )
    for payload in ({"type": "read"}, {"type": "read", "member_id": "m1a"}):
        resp = await client.post(f"/v1/notices/{to_all}/receipts", json=payload, headers=auth(me))
        assert resp.status == 200
        again = await resp.json()
        assert again["recorded"] is False
        assert again["read_at"] == first["read_at"]
    row = await db.fetchrow(
        "SELECT read_at, read_via FROM recipients WHERE notice_id = $1::uuid AND member_id = 'm1a'", to_all
    )
    assert row is not None
    assert row["read_via"] == "api"
    assert row["read_at"] == datetime.fromisoformat(first["read_at"])
    status = await get(client, f"/v1/notices/{to_all}")
    assert (status["counts"]["read"], status["counts"]["unread"], status["counts"]["recipients"]) == (1, 3, 4)
    inbox = await get(client, "/v1/members/m1a/inbox", token=me)
    assert [(i["notice_id"], i["read"], i["read_at"]) for i in inbox["items"]] == [
        (to_all, True, first["read_at"])
    ]
    assert (await get(client, "/v1/members/m1a/inbox?unread=true", token=me))["items"] == []

    before = await snapshot(db)
    # Not for another member, even a recipient ...
    resp = await client.post(
        f"/v1/notices/{to_all}/receipts", json={"type": "read", "member_id": "m1b"}, headers=auth(me)
    )
    body = await problem(resp, 404)
    assert body["detail"] == "recipient not found"
    # ... and not for a notice it did not receive.
    resp = await client.post(f"/v1/notices/{to_b2}/receipts", json={"type": "read"}, headers=auth(me))
    body = await problem(resp, 404)
    assert body["detail"] == "recipient not found"
    assert await snapshot(db) == before


async def test_receipt_for_a_non_recipient_is_404(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    nid = await _notice_by(client, org.b1_service, {"units": ["g1a"]})
    await _active(client, nid)
    before = await snapshot(db)
    for token, member in ((None, "m1b"), (None, "m2a"), (org.b1_service, "m1b"), (None, "nope")):
        resp = await client.post(
            f"/v1/notices/{nid}/receipts",
            json={"type": "read", "member_id": member},
            headers=auth(token) if token else auth(),
        )
        body = await problem(resp, 404)
        assert body["detail"] == "recipient not found"
    resp = await client.post(
        f"/v1/notices/{nid}/receipts", json={"type": "read"}, headers=auth(org.b1_service)
    )
    await problem(
        resp, 422, [{"field": "member_id", "message": "required when acting on behalf of a member"}]
    )
    assert await snapshot(db) == before
    # The service key records a read for its own member; counts follow, once.
    for recorded in (True, False):
        receipt = await post(
            client,
            f"/v1/notices/{nid}/receipts",
            {"type": "read", "member_id": "m1a"},
            token=org.b1_service,
            status=200,
        )
        assert receipt["recorded"] is recorded
    counts = (await get(client, f"/v1/notices/{nid}", token=org.b1_service))["counts"]
    assert (counts["recipients"], counts["read"], counts["unread"]) == (1, 1, 0)


async def test_inbox_of_a_shared_member_shows_each_branch_only_its_own_notices(
    client: TestClient[Any, Any], worker: None, org: Org
) -> None:
    await put(client, "/v1/members/mx", {"name": "Shared", "units": ["g1a", "g2a"]})
    from_b1 = await _notice_by(client, org.b1_service, {"members": ["mx"]})
    from_b2 = await _notice_by(client, org.b2_service, {"members": ["mx"]})
    for nid in (from_b1, from_b2):
        await _active(client, nid)

    async def inbox(token: str | None) -> list[str]:
        return [i["notice_id"] for i in (await get(client, "/v1/members/mx/inbox", token=token))["items"]]

    assert await inbox(org.b1_service) == [from_b1]
    assert await inbox(org.b2_service) == [from_b2]
    assert await inbox(None) == [from_b2, from_b1]  # the admin sees both, newest first
