"""Escalation policies and the names units give them: a unit's default_policy resolves the way
a send resolves it, cannot be left dangling, and a dangling one never blocks a DING; a global
policy is readable by every key that lists it; keys that are not an admin's space steps apart.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.db import policies
from notifier.settings import Settings
from tests.api.conftest import Org, fields, problem, snapshot
from tests.conftest import auth
from tests.helpers import get, post, put

Client = TestClient[Any, Any]


def _policy(name: str, *afters: str) -> dict[str, Any]:
    return {"name": name, "steps": [{"after": a, "remind": ["webhook"]} for a in afters or ("PT5M",)]}


async def test_a_units_default_policy_must_resolve_for_that_unit(
    client: Client, db: asyncpg.Connection, org: Org
) -> None:
    await post(client, "/v1/escalation-policies", _policy("b1-only"), token=org.b1_service)
    await post(client, "/v1/escalation-policies", _policy("everyone"))  # global (admin)
    before = await snapshot(db)
    resp = await client.put(
        "/v1/units/b1", json={"name": "B1", "parent_id": "c", "default_policy": "typo"}, headers=auth()
    )
    body = await problem(resp, 422)
    assert fields(body) == ["default_policy"] and "unknown escalation policy" in body["errors"][0]["message"]
    # b1's own policy is not b2's: the same rule as a DING sent from b2.
    resp = await client.put(
        "/v1/units/b2", json={"name": "B2", "parent_id": "c", "default_policy": "b1-only"}, headers=auth()
    )
    assert fields(await problem(resp, 422)) == ["default_policy"]
    assert await snapshot(db) == before
    b1 = await put(client, "/v1/units/b1", {"name": "B1", "parent_id": "c", "default_policy": "b1-only"})
    b2 = await put(client, "/v1/units/b2", {"name": "B2", "parent_id": "c", "default_policy": "everyone"})
    assert (b1["default_policy"], b2["default_policy"]) == ("b1-only", "everyone")


async def test_a_policy_a_unit_names_cannot_be_deleted_or_renamed(client: Client, org: Org) -> None:
    own = await post(client, "/v1/escalation-policies", _policy("standard"), token=org.b1_service)
    shared = await post(client, "/v1/escalation-policies", _policy("everyone"))
    await put(client, "/v1/units/b1", {"name": "B1", "parent_id": "c", "default_policy": "standard"})
    await put(client, "/v1/units/b2", {"name": "B2", "parent_id": "c", "default_policy": "everyone"})
    await put(client, "/v1/units/g2a", {"name": "G", "parent_id": "b2", "default_policy": "everyone"})

    resp = await client.delete(f"/v1/escalation-policies/{own['id']}", headers=auth(org.b1_service))
    body = await problem(resp, 409)
    assert "b1" in body["detail"]
    renamed = _policy("standard-v2")
    resp = await client.put(
        f"/v1/escalation-policies/{own['id']}", json=renamed, headers=auth(org.b1_service)
    )
    assert "b1" in (await problem(resp, 409))["detail"]
    # Same name, new steps: the unit still resolves it.
    same = _policy("standard", "PT10M")
    resp = await client.put(f"/v1/escalation-policies/{own['id']}", json=same, headers=auth(org.b1_service))
    assert resp.status == 200, await resp.text()

    resp = await client.delete(f"/v1/escalation-policies/{shared['id']}", headers=auth())
    detail = (await problem(resp, 409))["detail"]
    assert "b2" in detail and "g2a" in detail and "b1" not in detail
    # g2a gets a policy of its own by that name: it no longer depends on the global one.
    await post(client, "/v1/escalation-policies", _policy("everyone"), token=await _key(client, "g2a"))
    await put(client, "/v1/units/b2", {"name": "B2", "parent_id": "c"})
    resp = await client.delete(f"/v1/escalation-policies/{shared['id']}", headers=auth())
    assert resp.status == 204, await resp.text()


async def _key(client: Client, unit_id: str) -> str:
    created = await post(client, "/v1/api-keys", {"name": unit_id, "role": "service", "unit_id": unit_id})
    token: str = created["token"]
    return token


async def test_a_dangling_default_policy_sends_without_escalation_and_says_so(
    client: Client, db: asyncpg.Connection, org: Org
) -> None:
    # A unit naming a policy that is gone (set before names were checked, or renamed by hand).
    await db.execute("UPDATE units SET default_policy = 'gone' WHERE id = 'b1'")
    ding = {"kind": "ding", "title": "Muster", "body": "Now", "audience": {"units": ["g1a"]}}
    created = await post(client, "/v1/notices", ding, token=org.b1_service, status=202)
    assert created["escalation"] is None
    events = (await get(client, f"/v1/notices/{created['id']}/events", token=org.b1_service))["items"]
    assert [(e["kind"], e["detail"]["policy"]) for e in events] == [("policy_missing", "gone")]
    # A policy the caller names itself must still exist.
    resp = await client.post("/v1/notices", json={**ding, "escalation": "gone"}, headers=auth(org.b1_service))
    assert fields(await problem(resp, 422)) == ["escalation"]


async def test_a_global_policy_listed_is_readable_by_id_and_changed_by_admins_only(
    client: Client, org: Org
) -> None:
    shared = await post(client, "/v1/escalation-policies", _policy("everyone"))
    other = await post(client, "/v1/escalation-policies", _policy("b2-own"), token=org.b2_service)
    listed = await get(client, "/v1/escalation-policies", token=org.b1_secretary)
    assert [p["name"] for p in listed["items"]] == ["everyone"]
    got = await get(client, f"/v1/escalation-policies/{shared['id']}", token=org.b1_secretary)
    assert got == shared
    assert (await get(client, f"/v1/escalation-policies/{shared['id']}", token=org.b1_service)) == shared
    await get(client, f"/v1/escalation-policies/{other['id']}", token=org.b1_service, status=404)
    resp = await client.put(
        f"/v1/escalation-policies/{shared['id']}", json=_policy("mine"), headers=auth(org.b1_service)
    )
    await problem(resp, 403)
    resp = await client.delete(f"/v1/escalation-policies/{shared['id']}", headers=auth(org.b1_service))
    await problem(resp, 403)
    assert (await get(client, f"/v1/escalation-policies/{shared['id']}")) == shared


async def test_keys_that_are_not_an_admins_space_steps_at_least_a_minute_apart(
    client: Client, db: asyncpg.Connection, org: Org
) -> None:
    before = await snapshot(db)
    resp = await client.post(
        "/v1/escalation-policies", json=_policy("flood", "PT1S", "PT2S"), headers=auth(org.b1_service)
    )
    assert fields(await problem(resp, 422)) == ["steps[0].after", "steps[1].after"]
    resp = await client.post(
        "/v1/escalation-policies", json=_policy("close", "PT5M", "PT5M30S"), headers=auth(org.b1_service)
    )
    assert fields(await problem(resp, 422)) == ["steps[1].after"]
    flood = {
        "steps": [
            {"after": "PT1S", "remind": ["webhook"]},
            {"after": "PT2S", "notify": ["on_duty"], "channels": ["webhook"]},
        ],
        "repeat": 20,
    }
    ding = {"kind": "ding", "title": "t", "body": "b", "audience": {"units": ["g1a"]}, "escalation": flood}
    resp = await client.post("/v1/notices", json=ding, headers=auth(org.b1_secretary))
    assert fields(await problem(resp, 422)) == ["escalation.steps[0].after", "escalation.steps[1].after"]
    assert await snapshot(db) == before
    # A minute apart is fine for anyone; an admin may go closer.
    await post(client, "/v1/escalation-policies", _policy("ok", "PT1M", "PT2M"), token=org.b1_service)
    await post(client, "/v1/escalation-policies", _policy("fast", "PT1S", "PT2S"))
    await post(client, "/v1/notices", ding, status=202)


async def test_a_delete_racing_a_unit_that_names_the_policy_waits_and_refuses(
    client: Client, settings: Settings, org: Org
) -> None:
    shared = await post(client, "/v1/escalation-policies", _policy("everyone"))
    unit_put = await asyncpg.connect(settings.database_url)
    try:
        tx = unit_put.transaction()
        await tx.start()  # what PUT /v1/units does: resolve the name (locking it), then store it
        assert await policies.resolve(unit_put, "everyone", "b2", for_share=True) is not None
        await unit_put.execute("UPDATE units SET default_policy = 'everyone' WHERE id = 'b2'")
        delete = asyncio.ensure_future(
            client.delete(f"/v1/escalation-policies/{shared['id']}", headers=auth())
        )
        await asyncio.sleep(0.5)
        assert not delete.done()  # it waits for the unit's transaction ...
        await tx.commit()
        resp = await asyncio.wait_for(delete, timeout=15)
        assert "b2" in (await problem(resp, 409))["detail"]  # ... and then sees the reference
    finally:
        await unit_put.close()
    assert (await get(client, f"/v1/escalation-policies/{shared['id']}"))["name"] == "everyone"
