"""Rate limits per API key: a token bucket per key in PostgreSQL, shared by every API process,
taken from by the key lookup; 429 problem+json with Retry-After and the RateLimit-* headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import build_openapi, create_app
from notifier.settings import RateLimits, RoleLimit, Settings
from tests.api.conftest import issue_key
from tests.conftest import ADMIN_TOKEN, advance_clock, auth, make_settings
from tests.helpers import put

LIMITS = RateLimits(
    admin=RoleLimit(per_second=0.5, burst=3),
    secretary=RoleLimit(per_second=0.5, burst=3),
    service=RoleLimit(per_second=100, burst=100),
)


@pytest.fixture
def limited(server_urls: tuple[str, str]) -> Settings:
    return make_settings(server_urls, rate_limits=LIMITS)


@pytest.fixture
async def api(limited: Settings, db: asyncpg.Connection) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(limited), host="127.0.0.1")) as c:
        yield c


@pytest.fixture
async def desk(api: TestClient[Any, Any]) -> str:
    await put(api, "/v1/units/b1", {"name": "Branch 1", "parent_id": None})
    await put(api, "/v1/units/b2", {"name": "Branch 2", "parent_id": None})
    return await issue_key(api, {"name": "b1 desk", "role": "secretary", "unit_id": "b1"})


async def test_a_key_gets_its_burst_then_429_with_headers_and_refills_with_time(
    api: TestClient[Any, Any], desk: str, db: asyncpg.Connection
) -> None:
    for remaining in (2, 1, 0):
        resp = await api.get("/v1/units/b1", headers=auth(desk))
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "3"
        assert resp.headers["RateLimit-Remaining"] == str(remaining)
    refused = await api.get("/v1/units/b1", headers=auth(desk))
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    problem = await refused.json()
    assert problem["status"] == 429 and problem["title"] == "Too Many Requests"
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5 a second
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Reset"] == "6"
    # Refusals take nothing: refused again and again, the key is served once the time has passed.
    assert (await api.get("/v1/units/b1", headers=auth(desk))).status == 429
    await advance_clock(db, 2.0)
    assert (await api.get("/v1/units/b1", headers=auth(desk))).status == 200
    assert (await api.get("/v1/units/b1", headers=auth(desk))).status == 429
    await advance_clock(db, 60.0)
    resp = await api.get("/v1/units/b1", headers=auth(desk))
    assert resp.status == 200 and resp.headers["RateLimit-Remaining"] == "2"  # full (3), less this one


async def test_a_refused_request_changes_nothing(
    api: TestClient[Any, Any], desk: str, db: asyncpg.Connection
) -> None:
    for _ in range(3):
        assert (await api.get("/v1/units/b1", headers=auth(desk))).status == 200
    resp = await api.put("/v1/units/g1", json={"name": "G", "parent_id": "b1"}, headers=auth(desk))
    assert resp.status == 429
    assert await db.fetchval("SELECT count(*) FROM units WHERE id = 'g1'") == 0


async def test_one_keys_limit_is_its_own(api: TestClient[Any, Any], desk: str) -> None:
    other = await issue_key(api, {"name": "b2 desk", "role": "secretary", "unit_id": "b2"})
    service = await issue_key(api, {"name": "b1 app", "role": "service", "unit_id": "b1"})
    for _ in range(3):
        assert (await api.get("/v1/units/b1", headers=auth(desk))).status == 200
    assert (await api.get("/v1/units/b1", headers=auth(desk))).status == 429
    assert (await api.get("/v1/units/b2", headers=auth(other))).status == 200
    resp = await api.get("/v1/units/b1", headers=auth(service))
    assert resp.status == 200 and resp.headers["RateLimit-Limit"] == "100"
    # The bootstrap admin token is the operator's: not limited.
    for _ in range(5):
        resp = await api.get("/v1/units/b1", headers=auth())
        assert resp.status == 200 and "RateLimit-Limit" not in resp.headers


async def test_the_bucket_is_shared_by_api_processes_and_concurrent_requests(
    api: TestClient[Any, Any], desk: str, limited: Settings
) -> None:
    async with TestClient(TestServer(create_app(limited), host="127.0.0.1")) as second:
        statuses = await asyncio.gather(
            *(c.get("/v1/units/b1", headers=auth(desk)) for c in [api, second] * 5)
        )
    codes = sorted(r.status for r in statuses)
    assert codes == [200] * 3 + [429] * 7


def test_every_authenticated_operation_documents_429_with_its_headers() -> None:
    doc = build_openapi()
    operations = [op for item in doc["paths"].values() for op in item.values() if isinstance(op, dict)]
    authenticated = [op for op in operations if op.get("security")]
    assert authenticated
    for op in authenticated:
        reply = op["responses"].get("429")
        assert reply is not None, op["operationId"]
        assert set(reply["headers"]) == {
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
        }


async def test_a_console_session_is_limited_like_a_key_of_its_role(
    api: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """A secretary signed in by link gets the secretary's burst across all their sessions, then a
    429 page with Retry-After; another member's session has its own bucket; time refills it."""
    from tests.console.test_console import org, sign_in

    await org(api)
    await sign_in(api, "s0")
    for remaining in (2, 1, 0):
        resp = await api.get("/console/notices", allow_redirects=False)
        assert resp.status == 200
        assert resp.headers["RateLimit-Remaining"] == str(remaining)
    refused = await api.get("/console/notices", allow_redirects=False)
    assert refused.status == 429 and refused.headers["Retry-After"] == "2"
    assert refused.content_type == "text/html"
    await sign_in(api, "s0")  # a second session of the same member: the same bucket
    assert (await api.get("/console/notices", allow_redirects=False)).status == 429
    api.session.cookie_jar.clear()
    await sign_in(api, "s1")
    assert (await api.get("/console/notices", allow_redirects=False)).status == 200
    await advance_clock(db, 2)
    api.session.cookie_jar.clear()
    await sign_in(api, "s0")
    assert (await api.get("/console/notices", allow_redirects=False)).status == 200


async def test_the_bootstrap_admins_console_sessions_are_limited_like_an_admin_keys(
    api: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """A console session is a browser's cookie, not the operator's token: the bootstrap admin's
    sessions (signed in with the token) share one bucket with the admin role's limits, as the
    sessions of an admin key share that key's."""
    from tests.console.test_console import sign_in_with_token

    await sign_in_with_token(api, ADMIN_TOKEN)
    for remaining in (2, 1, 0):
        resp = await api.get("/console/notices", allow_redirects=False)
        assert resp.status == 200 and resp.headers["RateLimit-Remaining"] == str(remaining)
    refused = await api.get("/console/notices", allow_redirects=False)
    assert refused.status == 429 and refused.headers["Retry-After"] == "2"
    await sign_in_with_token(api, ADMIN_TOKEN)  # another session of the bootstrap admin: the same bucket
    assert (await api.get("/console/notices", allow_redirects=False)).status == 429
    await sign_in_with_token(
        api, await issue_key(api, {"name": "ops", "role": "admin"})
    )  # a key's own bucket
    assert (await api.get("/console/notices", allow_redirects=False)).status == 200
    await advance_clock(db, 2)
    await sign_in_with_token(api, ADMIN_TOKEN)
    assert (await api.get("/console/notices", allow_redirects=False)).status == 200
    # The operator's token itself stays unlimited on the API.
    resp = await api.get("/v1/units", headers=auth())
    assert resp.status == 200 and "RateLimit-Limit" not in resp.headers
