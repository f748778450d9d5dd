"""API keys: a leaked key must not persist. A service key cannot copy itself, revoking a key
revokes every key issued with it, keys may expire (and a key's children expire no later), and
``GET /v1/api-keys`` lists what the caller manages -- never a token, never outside its reach.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.db import api_keys
from notifier.settings import Settings
from tests.api.conftest import Org, issue_key, problem, snapshot
from tests.conftest import advance_clock, auth, wait_until
from tests.helpers import get, post, put


async def _works(client: TestClient[Any, Any], token: str) -> bool:
    resp = await client.get("/v1/units", headers=auth(token))
    if resp.status == 401:
        return False
    assert resp.status == 200, await resp.text()
    return True


async def _member_works(client: TestClient[Any, Any], token: str, member: str) -> bool:
    resp = await client.get(f"/v1/members/{member}/inbox", headers=auth(token))
    assert resp.status in (200, 401), await resp.text()
    return resp.status == 200


async def _listed(
    client: TestClient[Any, Any], token: str | None = None, query: str = ""
) -> list[dict[str, Any]]:
    """Every key the caller may see, walking the pages."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await get(client, f"/v1/api-keys?limit=2{query}{cursor}", token=token)
        assert len(page["items"]) <= 2
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        cursor = f"&cursor={page['next_cursor']}"


async def _names(client: TestClient[Any, Any], token: str | None = None, query: str = "") -> list[str]:
    return sorted(k["name"] for k in await _listed(client, token, query))


async def test_a_service_key_cannot_issue_service_keys(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """Before: b1's service key minted more service keys, so revoking it left copies behind."""
    before = await snapshot(db)
    for unit in ("b1", "g1a"):
        resp = await client.post(
            "/v1/api-keys",
            json={"name": "copy", "role": "service", "unit_id": unit},
            headers=auth(org.b1_service),
        )
        body = await problem(resp, 403)
        assert body["detail"] == "only an admin may issue service keys"
    assert await snapshot(db) == before
    # It still issues keys for people in its units.
    await issue_key(client, {"name": "g1a desk", "role": "secretary", "unit_id": "g1a"}, token=org.b1_service)
    await issue_key(client, {"name": "m1b phone", "role": "member", "member_id": "m1b"}, token=org.b1_service)


async def test_revoking_a_key_revokes_every_key_issued_with_it(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """Before: the children of a revoked key kept working."""
    ops = await post(client, "/v1/api-keys", {"name": "ops", "role": "admin"})
    deputy = await post(client, "/v1/api-keys", {"name": "deputy", "role": "admin"}, token=ops["token"])
    b1_app = await post(
        client,
        "/v1/api-keys",
        {"name": "b1 app 2", "role": "service", "unit_id": "b1"},
        token=deputy["token"],
    )
    desk = await issue_key(
        client, {"name": "g1a desk", "role": "secretary", "unit_id": "g1a"}, token=b1_app["token"]
    )
    phone = await issue_key(
        client, {"name": "m1a phone 2", "role": "member", "member_id": "m1a"}, token=b1_app["token"]
    )
    # Revoking a branch app takes the keys it issued with it, nothing else.
    resp = await client.delete(f"/v1/api-keys/{b1_app['id']}", headers=auth(deputy["token"]))
    assert resp.status == 204
    assert not await _works(client, b1_app["token"])
    assert not await _member_works(client, desk, "m1a")
    assert not await _member_works(client, phone, "m1a")
    assert await _works(client, deputy["token"]) and await _works(client, org.b1_service)
    assert await _member_works(client, org.m1a_member, "m1a")

    # Revoking the root of a tree reaches every generation below it.
    again = await post(
        client,
        "/v1/api-keys",
        {"name": "b2 app 2", "role": "service", "unit_id": "b2"},
        token=deputy["token"],
    )
    grandchild = await issue_key(
        client, {"name": "m2a phone 2", "role": "member", "member_id": "m2a"}, token=again["token"]
    )
    resp = await client.delete(f"/v1/api-keys/{ops['id']}", headers=auth())
    assert resp.status == 204
    for token in (ops["token"], deputy["token"], again["token"]):
        assert not await _works(client, token)
    assert not await _member_works(client, grandchild, "m2a")
    assert await _works(client, org.b1_service) and await _works(client, org.b2_service)
    revoked = {k["name"] for k in await _listed(client, query="&include_revoked=true") if k["revoked_at"]}
    assert revoked == {"ops", "deputy", "b1 app 2", "g1a desk", "m1a phone 2", "b2 app 2", "m2a phone 2"}
    listed = {k["name"]: k for k in await _listed(client, query="&include_revoked=true")}
    assert listed["deputy"]["created_by"] == ops["id"] and listed["b1 app 2"]["created_by"] == deputy["id"]
    assert listed["ops"]["created_by"] is None  # the bootstrap admin token
    # Revoking again, or a child of an already revoked key, is still a 204 (idempotent).
    resp = await client.delete(f"/v1/api-keys/{ops['id']}", headers=auth())
    assert resp.status == 204


async def test_listing_keys_is_scoped_and_never_shows_tokens(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await post(client, "/v1/api-keys", {"name": "c app", "role": "service", "unit_id": "c"})
    g1a_app = await issue_key(client, {"name": "g1a app", "role": "service", "unit_id": "g1a"})
    await issue_key(client, {"name": "g1a desk", "role": "secretary", "unit_id": "g1a"}, token=org.b1_service)
    await post(client, "/v1/api-keys", {"name": "ops", "role": "admin"})
    await put(client, "/v1/members/mx", {"name": "Shared", "units": ["g1a", "g2a"]})
    await post(client, "/v1/api-keys", {"name": "mx phone", "role": "member", "member_id": "mx"})

    everything = await _listed(client)
    assert sorted(k["name"] for k in everything) == sorted(
        [
            "b1 app",
            "b2 app",
            "b1 desk",
            "m1a phone",
            "m2a phone",
            "c app",
            "g1a app",
            "g1a desk",
            "ops",
            "mx phone",
        ]
    )
    rendered = str(everything)
    assert "ntf_" not in rendered and "token" not in {f for k in everything for f in k}
    assert set(everything[0]) == {
        "id",
        "name",
        "role",
        "unit_id",
        "member_id",
        "created_by",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    }
    # A branch sees its own unit's and its children's keys and its own members' keys; not its
    # sibling's, not its parent's, not an admin key, not the key of a member it shares.
    assert await _names(client, org.b1_service) == ["b1 app", "b1 desk", "g1a app", "g1a desk", "m1a phone"]
    assert await _names(client, org.b2_service) == ["b2 app", "m2a phone"]
    # A child unit's key does not see its parent's (m1a belongs to g1a alone: its keys are g1a's too).
    assert await _names(client, g1a_app) == ["g1a app", "g1a desk", "m1a phone"]
    # And what it cannot list, it cannot revoke.
    c_app = next(k["id"] for k in everything if k["name"] == "c app")
    ops = next(k["id"] for k in everything if k["name"] == "ops")
    mx_phone = next(k["id"] for k in everything if k["name"] == "mx phone")
    b1_app = next(k["id"] for k in everything if k["name"] == "b1 app")
    before = await snapshot(db)
    for key_id in (c_app, ops, mx_phone, b1_app):
        resp = await client.delete(f"/v1/api-keys/{key_id}", headers=auth(g1a_app))
        await problem(resp, 404)
    for key_id in (c_app, ops, mx_phone):
        resp = await client.delete(f"/v1/api-keys/{key_id}", headers=auth(org.b1_service))
        await problem(resp, 404)
    assert await snapshot(db) == before

    # Secretaries and members manage no keys; revoked keys are unknown.
    for token in (org.b1_secretary, org.m1a_member):
        resp = await client.get("/v1/api-keys", headers=auth(token))
        await problem(resp, 403)
    resp = await client.delete(f"/v1/api-keys/{b1_app}", headers=auth(org.b1_service))
    assert resp.status == 204
    resp = await client.get("/v1/api-keys", headers=auth(org.b1_service))
    await problem(resp, 401)
    assert "b1 app" not in await _names(client)
    assert "b1 app" in await _names(client, query="&include_revoked=true")

    # Cursors are ours or a 422.
    for bad in ("nope", "bm9wZQ", "MjAyNi0wMS0wMXxub3BlCg"):
        resp = await client.get(f"/v1/api-keys?cursor={bad}", headers=auth())
        await problem(resp, 422)


async def test_keys_expire_and_their_children_expire_no_later(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    now: datetime = await db.fetchval("SELECT notifier_now()")
    hour = (now + timedelta(hours=1)).isoformat()
    temp = await post(
        client, "/v1/api-keys", {"name": "temp", "role": "service", "unit_id": "b1", "expires_at": hour}
    )
    assert datetime.fromisoformat(temp["expires_at"]) == now + timedelta(hours=1)
    child = await post(
        client, "/v1/api-keys", {"name": "child", "role": "member", "member_id": "m1a"}, token=temp["token"]
    )
    assert child["expires_at"] == temp["expires_at"]  # inherited
    limit = datetime.fromisoformat(temp["expires_at"])
    before = await snapshot(db)
    for expires, message in (
        (
            (now + timedelta(hours=2)).isoformat(),
            f"must not be later than your own key's expiry, {limit.isoformat()}",
        ),
        ((now - timedelta(seconds=1)).isoformat(), "must be in the future"),
    ):
        resp = await client.post(
            "/v1/api-keys",
            json={"name": "later", "role": "member", "member_id": "m1b", "expires_at": expires},
            headers=auth(temp["token"]),
        )
        await problem(resp, 422, [{"field": "expires_at", "message": message}])
    resp = await client.post(
        "/v1/api-keys",
        json={"name": "naive", "role": "member", "member_id": "m1b", "expires_at": "2099-01-01T00:00:00"},
        headers=auth(),
    )
    body = await problem(resp, 422)
    assert [e["field"] for e in body["errors"]] == ["expires_at"]
    assert await snapshot(db) == before

    assert await _works(client, temp["token"]) and await _member_works(client, child["token"], "m1a")
    await advance_clock(db, 3601)
    assert not await _works(client, temp["token"])
    resp = await client.get("/v1/api-keys", headers=auth(temp["token"]))
    await problem(resp, 401)
    assert not await _member_works(client, child["token"], "m1a")
    assert await _works(client, org.b1_service)
    assert "temp" not in await _names(client)
    assert "temp" in await _names(client, query="&include_revoked=true")


async def test_last_used_at_is_written_at_most_once_a_minute(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    created = await post(client, "/v1/api-keys", {"name": "app", "role": "service", "unit_id": "b1"})

    async def last_used() -> datetime | None:
        value: datetime | None = await db.fetchval(
            "SELECT last_used_at FROM api_keys WHERE id = $1", created["id"]
        )
        return value

    async def xmin() -> str:
        return str(await db.fetchval("SELECT xmin::text FROM api_keys WHERE id = $1", created["id"]))

    assert await last_used() is None
    await get(client, "/v1/units", token=created["token"])
    first = await last_used()
    assert first is not None
    version = await xmin()
    for _ in range(5):
        await get(client, "/v1/units", token=created["token"])
    assert await last_used() == first and await xmin() == version  # read, not rewritten
    await advance_clock(db, 61)
    await get(client, "/v1/units", token=created["token"])
    later = await last_used()
    assert later is not None and later >= first + timedelta(seconds=61)
    listed = {k["name"]: k for k in await _listed(client, org.b1_service)}
    assert datetime.fromisoformat(listed["app"]["last_used_at"]) == later


async def test_a_key_issued_while_its_issuer_is_revoked_does_not_survive(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org, settings: Settings
) -> None:
    """A request authenticated just before its key is revoked must not leave a child behind: the
    insert holds its issuer, so it waits for the revocation and then finds the issuer revoked."""
    b1_app = str(await db.fetchval("SELECT id FROM api_keys WHERE name = 'b1 app'"))
    blocker = await asyncpg.connect(settings.database_url)
    held = blocker.transaction()
    await held.start()
    try:
        await api_keys.revoke_tree(blocker, b1_app)  # not committed yet: b1 app's row is held
        late = asyncio.create_task(
            client.post(
                "/v1/api-keys",
                json={"name": "late", "role": "member", "member_id": "m1b"},
                headers=auth(org.b1_service),
            )
        )

        async def blocked_or_done() -> bool:
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return late.done() or waiting >= 1

        await wait_until(blocked_or_done, within=20)
        await held.commit()
    finally:
        await blocker.close()  # rolls back, if the test failed before the commit
    resp = await late
    await problem(resp, 401)
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE name = 'late'") == 0
