"""POST /v1/notices with Idempotency-Key: one notice per (API key, Idempotency-Key), replays of
the first response for the same body, 422 for a different body, 409 while the first is in flight."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import asyncpg
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from notifier.api.notices import NoticeIn, request_digest
from tests.api.conftest import count, issue_key, problem, snapshot
from tests.conftest import auth
from tests.helpers import put

NOTICE = {"kind": "ding", "title": "Muster", "body": "Report now", "audience": {"units": ["c"]}}


async def _org(client: TestClient[Any, Any]) -> None:
    await put(client, "/v1/units/c", {"name": "Committee"})
    await put(client, "/v1/members/m", {"name": "Officer", "units": ["c"]})


async def _send(
    client: TestClient[Any, Any], body: dict[str, Any], key: str | None, token: str | None = None
) -> ClientResponse:
    headers = auth(token) if token else auth()
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/v1/notices", json=body, headers=headers)


async def test_same_key_same_body_replays_the_first_response(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _org(client)
    first = await _send(client, NOTICE, "k-1")
    assert first.status == 202, await first.text()
    created = await first.json()
    assert first.headers["Location"] == f"/v1/notices/{created['id']}"
    assert "Idempotent-Replayed" not in first.headers
    for _ in range(3):
        again = await _send(client, NOTICE, "k-1")
        assert again.status == 202, await again.text()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await again.json() == created
    # Key order and whitespace in the JSON do not make it a different request.
    reordered = dict(reversed(list(NOTICE.items())))
    again = await _send(client, reordered, "k-1")
    assert again.status == 202
    assert (await again.json())["id"] == created["id"]
    assert await count(db, "notices") == 1
    assert await count(db, "idempotency_keys") == 1
    row = await db.fetchrow("SELECT key_owner, key, notice_id FROM idempotency_keys")
    assert row is not None
    assert (row["key_owner"], row["key"], str(row["notice_id"])) == ("admin", "k-1", created["id"])


async def test_same_key_different_body_is_422(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await _org(client)
    first = await _send(client, NOTICE, "k-2")
    assert first.status == 202
    before = await snapshot(db)
    for change in (
        {"title": "Muster!"},
        {"channels": ["inapp", "webhook"]},
        {"audience": {"members": ["m"]}},
    ):
        resp = await _send(client, {**NOTICE, **change}, "k-2")
        body = await problem(
            resp, 422, [{"field": "Idempotency-Key", "message": "reused with a different body"}]
        )
        assert body["type"] == "https://notifier.dev/problems/idempotency-mismatch"
    # The default channel list is part of the request: spelling it out is the same request.
    same = await _send(client, {**NOTICE, "channels": ["inapp"]}, "k-2")
    assert same.status == 202
    assert (await same.json())["id"] == (await first.json())["id"]
    assert await snapshot(db) == before
    assert await count(db, "notices") == 1


async def test_concurrent_requests_with_one_key_create_one_notice(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _org(client)
    responses = await asyncio.gather(*(_send(client, NOTICE, "k-race") for _ in range(10)))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {202, 409}, statuses
    assert 202 in statuses
    ids = set()
    for resp in responses:
        if resp.status == 202:
            ids.add((await resp.json())["id"])
        else:
            body = await problem(resp, 409)
            assert body["type"] == "https://notifier.dev/problems/idempotency-in-flight"
    assert len(ids) == 1
    assert await count(db, "notices") == 1
    assert await db.fetchval("SELECT id::text FROM notices") == ids.pop()
    # Once the first has finished, a retry replays it.
    after = await _send(client, NOTICE, "k-race")
    assert after.status == 202
    assert after.headers["Idempotent-Replayed"] == "true"
    assert await count(db, "notices") == 1


async def test_keys_are_scoped_per_api_key(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await _org(client)
    one = await issue_key(client, {"name": "app one", "role": "service", "unit_id": "c"})
    two = await issue_key(client, {"name": "app two", "role": "service", "unit_id": "c"})
    ids = []
    for token in (one, two, None):
        resp = await _send(client, NOTICE, "shared-key", token)
        assert resp.status == 202, await resp.text()
        assert "Idempotent-Replayed" not in resp.headers
        ids.append((await resp.json())["id"])
    assert len(set(ids)) == 3
    assert await count(db, "notices") == 3
    # Each replays its own.
    for token, nid in zip((one, two, None), ids, strict=True):
        resp = await _send(client, NOTICE, "shared-key", token)
        assert resp.status == 202
        assert (await resp.json())["id"] == nid
    # A different body under another key's idempotency key is not a mismatch for this one.
    resp = await _send(client, {**NOTICE, "title": "Other"}, "only-two", two)
    assert resp.status == 202
    resp = await _send(client, NOTICE, "only-two", one)
    assert resp.status == 202
    assert "Idempotent-Replayed" not in resp.headers
    assert await count(db, "notices") == 5


async def test_without_the_header_every_request_is_new(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _org(client)
    ids = set()
    for _ in range(3):
        resp = await _send(client, NOTICE, None)
        assert resp.status == 202
        ids.add((await resp.json())["id"])
    assert len(ids) == 3
    assert await count(db, "notices") == 3
    assert await count(db, "idempotency_keys") == 0


async def test_expired_key_creates_a_new_notice(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await _org(client)
    first = await (await _send(client, NOTICE, "k-old")).json()
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    resp = await _send(client, {**NOTICE, "title": "A new muster"}, "k-old")
    assert resp.status == 202, await resp.text()
    second = await resp.json()
    assert second["id"] != first["id"]
    assert await count(db, "notices") == 2
    # The key now belongs to the second notice.
    replay = await _send(client, {**NOTICE, "title": "A new muster"}, "k-old")
    assert (await replay.json())["id"] == second["id"]


async def test_bad_idempotency_key_and_failed_request_store_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _org(client)
    before = await snapshot(db)
    for key in ("", "k" * 256):
        resp = await _send(client, NOTICE, key)
        await problem(
            resp, 422, [{"field": "Idempotency-Key", "message": "must be 1..255 printable ASCII characters"}]
        )
    # A request refused for its audience does not claim the key ...
    resp = await _send(client, {**NOTICE, "audience": {"units": ["nope"]}}, "k-3")
    await problem(resp, 422, [{"field": "audience.units[0]", "message": "unknown unit"}])
    assert await snapshot(db) == before
    # ... so the corrected request may use it.
    resp = await _send(client, NOTICE, "k-3")
    assert resp.status == 202
    assert "Idempotent-Replayed" not in resp.headers
    assert await count(db, "notices") == 1


def test_a_body_that_names_no_optional_channels_keeps_the_digest_it_had_before_they_existed() -> None:
    """A key's hash is what it was before ``optional_channels`` existed: a retry across the
    upgrade (keys live 24 h) replays instead of answering "used with a different body"."""
    body = NoticeIn.model_validate(
        {"kind": "notice", "title": "t", "body": "b", "audience": {"units": ["c"]}, "channels": ["inapp"]}
    )
    before = body.model_dump(mode="json")
    before.pop("optional_channels")
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert request_digest(body) == hashlib.sha256(canonical.encode()).digest()
    named = body.model_copy(update={"optional_channels": ["inapp"], "channels": ["inapp", "sms"]})
    assert request_digest(named) != request_digest(body.model_copy(update={"channels": ["inapp", "sms"]}))
