"""The audit log: every change writes one entry in its own transaction (who, what, when, from
where), GET /v1/audit is scoped like everything else, and no entry holds a secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.db.api_keys import hash_token
from tests.api.conftest import Org, issue_key
from tests.conftest import advance_clock, auth, wait_until
from tests.helpers import get, post, put

Client = TestClient[Any, Any]

TITLE = "Muster at the north gate"
BODY = "Bring the duty roster and radio set 7 -- confidential"
WEBHOOK_URL = "https://hooks.example.org/notifier/s3cr3t-path-token-0042"
WEBHOOK_SECRET = "whsec_c2VjcmV0LWZvci1hdWRpdC10ZXN0LTAxMjM0NTY3"
T0 = datetime(2030, 3, 1, 8, 0, tzinfo=UTC)


async def _key_id(db: asyncpg.Connection, token: str) -> str:
    return str(await db.fetchval("SELECT id FROM api_keys WHERE token_hash = $1", hash_token(token)))


async def _entries(client: Client, query: str = "", token: str | None = None, status: int = 200) -> Any:
    return await get(client, "/v1/audit" + query, token=token, status=status)


async def _every_change(client: Client, token: str, db: asyncpg.Connection) -> dict[str, str]:
    """One of each audited change, by the key ``token`` (a b1 service key); returns ids made."""
    await put(client, "/v1/units/g1c", {"name": "Group 1c", "parent_id": "b1"}, token=token)
    await put(client, "/v1/members/m1c", {"name": "Officer 1c", "units": ["g1c"]}, token=token)
    await post(
        client,
        "/v1/members:batch",
        {"members": [{"id": "m1d", "name": "D", "units": ["g1c"]}]},
        token=token,
        status=200,
    )
    contact = await post(
        client,
        "/v1/members/m1c/contacts",
        {"channel": "webhook", "target": {"url": WEBHOOK_URL, "secret": WEBHOOK_SECRET}},
        token=token,
    )
    resp = await client.delete(f"/v1/members/m1c/contacts/{contact['id']}", headers=auth(token))
    assert resp.status == 204
    policy = await post(
        client,
        "/v1/escalation-policies",
        {"name": "p", "steps": [{"after": "PT5M", "remind": ["webhook"]}]},
        token=token,
    )
    await put(
        client,
        f"/v1/escalation-policies/{policy['id']}",
        {"name": "p", "steps": [{"after": "PT10M", "remind": ["webhook"]}]},
        token=token,
    )
    resp = await client.delete(f"/v1/escalation-policies/{policy['id']}", headers=auth(token))
    assert resp.status == 204
    shift = {
        "member_id": "m1c",
        "starts_at": T0.isoformat(),
        "ends_at": (T0 + timedelta(hours=4)).isoformat(),
    }
    await put(client, "/v1/units/g1c/duty", {"shifts": [shift]}, token=token)
    new_key = await post(
        client, "/v1/api-keys", {"name": "g1c desk", "role": "secretary", "unit_id": "g1c"}, token=token
    )
    rotated = await post(
        client, f"/v1/api-keys/{new_key['id']}/rotate", {"previous_valid_for": 60}, token=token, status=200
    )
    assert rotated["token"] != new_key["token"]
    resp = await client.delete(f"/v1/api-keys/{new_key['id']}", headers=auth(token))
    assert resp.status == 204
    notice = await post(
        client,
        "/v1/notices",
        {"kind": "notice", "title": TITLE, "body": BODY, "audience": {"units": ["g1c"]}},
        token=token,
        status=202,
    )

    async def sent() -> bool:
        state = await db.fetchval("SELECT state FROM notices WHERE id = $1", UUID(notice["id"]))
        return bool(state not in ("queued", "fanning_out"))

    await wait_until(sent)
    resp = await client.post(
        f"/v1/notices/{notice['id']}/remind", json={"channels": ["inapp"]}, headers=auth(token)
    )
    assert resp.status == 202, await resp.text()
    resp = await client.post(f"/v1/notices/{notice['id']}/recall", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return {
        "notice": notice["id"],
        "key": new_key["id"],
        "key_token": new_key["token"],
        "contact": contact["id"],
    }


ACTIONS = [
    "unit.put",
    "member.put",
    "member.batch",
    "contact.add",
    "contact.delete",
    "policy.create",
    "policy.update",
    "policy.delete",
    "roster.put",
    "api_key.create",
    "api_key.rotate",
    "api_key.revoke",
    "notice.create",
    "notice.remind",
    "notice.recall",
]


async def test_every_change_is_recorded_with_who_what_when_and_where(
    client: Client, db: asyncpg.Connection, org: Org, worker: None
) -> None:
    await db.execute("TRUNCATE audit_log")  # the organisation's own set-up is recorded too
    made = await _every_change(client, org.b1_service, db)
    page = await _entries(client, "?limit=500")
    entries = list(reversed(page["items"]))  # newest first
    assert [e["action"] for e in entries] == ACTIONS
    actor = await _key_id(db, org.b1_service)
    for e in entries:
        assert e["actor_key_id"] == actor and e["actor_role"] == "service" and e["actor_unit_id"] == "b1"
        assert e["address"] == "127.0.0.1"
        assert e["at"] is not None
    by_action = {e["action"]: e for e in entries}
    assert by_action["unit.put"]["target_id"] == "g1c"
    assert by_action["unit.put"]["unit_ids"] == ["b1", "g1c"]
    assert by_action["notice.create"]["target_id"] == made["notice"]
    assert by_action["notice.create"]["unit_ids"] == ["b1", "g1c"]
    assert by_action["api_key.revoke"]["target_id"] == made["key"]
    assert by_action["contact.add"]["target_id"] == made["contact"]
    assert by_action["contact.add"]["details"] == {
        "member_id": "m1c",
        "channel": "webhook",
        "target": "***0042",
    }


async def test_an_admins_budget_and_lesson_changes_are_recorded_for_the_unit(
    client: Client, db: asyncpg.Connection, org: Org
) -> None:
    """The changes only an admin makes (the cost guard's budgets) and the unit's lessons are on
    record too, readable by the unit's own keys."""
    await db.execute("TRUNCATE audit_log")
    await put(client, "/v1/units/b1/budgets/sms", {"daily_limit": 10})
    await put(client, "/v1/units/b1/budgets/dingtalk_ding.phone", {"daily_limit": 5})
    resp = await client.delete("/v1/units/b1/budgets/sms", headers=auth())
    assert resp.status == 204, await resp.text()
    lesson = {"title": "Lesson", "body": "Read the charter."}
    await put(client, "/v1/units/b1/lessons/2030-03-02", lesson, token=org.b1_service)
    await put(client, "/v1/units/b1/lessons/2030-03-02", {**lesson, "title": "L2"}, token=org.b1_service)
    resp = await client.delete("/v1/units/b1/lessons/2030-03-02", headers=auth(org.b1_service))
    assert resp.status == 204, await resp.text()
    page = await _entries(client, "?limit=500", token=org.b1_secretary)
    assert [(e["action"], e["unit_ids"]) for e in reversed(page["items"])] == [
        ("budget.put", ["b1"]),
        ("budget.put", ["b1"]),
        ("budget.delete", ["b1"]),
        ("lesson.create", ["b1"]),
        ("lesson.update", ["b1"]),
        ("lesson.delete", ["b1"]),
    ]
    assert [e["actor_key_id"] for e in reversed(page["items"])][:3] == [None] * 3  # the admin's
    assert page["items"][-2]["details"]["channel"] == "dingtalk_ding.phone"


async def test_no_entry_holds_a_token_a_message_or_a_full_address(
    client: Client, db: asyncpg.Connection, org: Org, worker: None
) -> None:
    made = await _every_change(client, org.b1_service, db)
    dump = "\n".join(str(tuple(r)) for r in await db.fetch("SELECT * FROM audit_log"))
    for secret in (made["key_token"], org.b1_service, TITLE, BODY, WEBHOOK_URL, WEBHOOK_SECRET, "s3cr3t"):
        assert secret not in dump


async def test_a_refused_change_leaves_no_entry(client: Client, db: asyncpg.Connection, org: Org) -> None:
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    resp = await client.put(
        "/v1/units/x", json={"name": "X", "parent_id": "nowhere"}, headers=auth(org.b1_service)
    )
    assert resp.status == 422
    resp = await client.post(
        "/v1/escalation-policies",
        json={"name": "p", "steps": [{"after": "PT5M", "remind": ["nosuch"]}]},
        headers=auth(org.b1_service),
    )
    assert resp.status == 422
    assert await db.fetchval("SELECT count(*) FROM audit_log") == before


async def test_the_log_is_append_only(db: asyncpg.Connection, client: Client, org: Org) -> None:
    assert await db.fetchval("SELECT count(*) FROM audit_log") > 0
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE audit_log SET action = 'nothing'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM audit_log")


async def test_a_unit_bound_key_reads_its_subtree_only(
    client: Client, db: asyncpg.Connection, org: Org, worker: None
) -> None:
    await db.execute("TRUNCATE audit_log")
    await _every_change(client, org.b1_service, db)
    await put(client, "/v1/units/g2c", {"name": "Group 2c", "parent_id": "b2"}, token=org.b2_service)
    await put(client, "/v1/units/top", {"name": "Top", "parent_id": None})  # the admin's, about no branch

    def about(page: Any) -> set[str]:
        return {u for e in page["items"] for u in e["unit_ids"]}

    everything = await _entries(client, "?limit=500")
    assert len(everything["items"]) == len(ACTIONS) + 2
    b1 = await _entries(client, "?limit=500", token=org.b1_service)
    assert [e["action"] for e in reversed(b1["items"])] == ACTIONS
    assert "b2" not in about(b1) and "g2c" not in about(b1) and "top" not in about(b1)
    # The secretary of b1 reads the same; b2's key reads only its own.
    assert len((await _entries(client, "?limit=500", token=org.b1_secretary))["items"]) == len(ACTIONS)
    b2 = await _entries(client, "?limit=500", token=org.b2_service)
    assert [(e["action"], e["target_id"]) for e in b2["items"]] == [("unit.put", "g2c")]
    # A unit outside the key's reach -- sibling, parent, unknown -- is 404, as everywhere.
    for unit in ("b1", "g1c", "c", "nowhere"):
        await _entries(client, f"?unit={unit}", token=org.b2_service, status=404)
    await _entries(client, "?unit=b2", token=org.b1_service, status=404)
    # A unit inside: that subtree only.
    g1c = await _entries(client, "?unit=g1c&limit=500", token=org.b1_service)
    assert g1c["items"] and all("g1c" in e["unit_ids"] for e in g1c["items"])
    # Member keys read no audit log.
    resp = await client.get("/v1/audit", headers=auth(org.m1a_member))
    assert resp.status == 403
    resp = await client.get("/v1/audit")
    assert resp.status == 401


async def test_filters_and_paging(client: Client, db: asyncpg.Connection, org: Org, worker: None) -> None:
    await db.execute("TRUNCATE audit_log")
    await put(client, "/v1/units/early", {"name": "Early", "parent_id": None})
    await advance_clock(db, 3600)
    mark = await db.fetchval("SELECT notifier_now()")
    await _every_change(client, org.b1_service, db)
    other = await issue_key(client, {"name": "b1 two", "role": "service", "unit_id": "b1"})
    await put(client, "/v1/units/g1z", {"name": "Z", "parent_id": "b1"}, token=other)
    actor = await _key_id(db, org.b1_service)
    mine = await _entries(client, f"?actor={actor}&limit=500")
    assert len(mine["items"]) == len(ACTIONS)
    admin = await _entries(client, "?actor=admin&limit=500")
    assert {e["actor_key_id"] for e in admin["items"]} == {None}
    assert {e["target_id"] for e in admin["items"]} >= {"early"}
    puts = await _entries(client, "?action=unit.put&limit=500")
    assert [e["target_id"] for e in puts["items"]] == ["g1z", "g1c", "early"]
    since = await _entries(client, "?action=unit.put&from=" + mark.isoformat().replace("+", "%2B"))
    assert [e["target_id"] for e in since["items"]] == ["g1z", "g1c"]
    until = await _entries(client, "?action=unit.put&to=" + mark.isoformat().replace("+", "%2B"))
    assert [e["target_id"] for e in until["items"]] == ["early"]
    # Pages of 5 join up to the whole, newest first, without repeats.
    seen: list[int] = []
    query = "?limit=5"
    while True:
        page = await _entries(client, query, token=org.b1_service)
        seen += [e["id"] for e in page["items"]]
        if page["next_cursor"] is None:
            break
        query = f"?limit=5&cursor={page['next_cursor']}"
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == len(ACTIONS) + 2
    resp = await client.get("/v1/audit?cursor=bm9wZQ", headers=auth())
    assert resp.status == 422
