"""Helpers for the API tests: problem+json assertions, table snapshots and a scoped organisation.

The organisation used by the scoping tests::

    c (committee)
    ├── b1 ── g1a (member m1a), g1b (member m1b)
    └── b2 ── g2a (member m2a), g2b (member m2b)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from tests.conftest import make_settings
from tests.helpers import post, put

PROBLEM_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
}
# Every table a request could write to; a rejected request must leave all of them as they were.
TABLES = (
    "units",
    "members",
    "member_units",
    "contacts",
    "api_keys",
    "notices",
    "idempotency_keys",
    "recipients",
    "deliveries",
    "notice_counts",
    "unit_secretaries",
    "duty_shifts",
)

BOOKKEEPING = {"api_keys": "last_used_at"}


async def problem(
    resp: ClientResponse, status: int, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """Assert an RFC 9457 response with this status (and exactly these errors, when given)."""
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/problem+json", resp.content_type
    body: dict[str, Any] = await resp.json(content_type="application/problem+json")
    assert body["status"] == status
    assert body["title"] == PROBLEM_TITLES[status]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["instance"] == resp.url.path
    if errors is not None:
        assert body["errors"] == errors, body
    return body


def fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]


async def snapshot(db: asyncpg.Connection) -> dict[str, list[str]]:
    """Every row of every table, as sorted JSON text: equal snapshots mean nothing was written."""
    out: dict[str, list[str]] = {}
    for table in TABLES:
        # Bookkeeping, not data: authenticating with a key marks it used (at most once a minute).
        ignored = BOOKKEEPING.get(table, "")
        rows = await db.fetch(f"SELECT (to_jsonb(t) - '{ignored}')::text AS r FROM {table} t ORDER BY r")
        out[table] = [r["r"] for r in rows]
    return out


async def count(db: asyncpg.Connection, table: str) -> int:
    assert table in TABLES
    n = await db.fetchval(f"SELECT count(*) FROM {table}")
    assert isinstance(n, int)
    return n


@pytest.fixture
async def strict_client(
    server_urls: tuple[str, str], db: asyncpg.Connection
) -> AsyncIterator[TestClient[Any, Any]]:
    """The app as deployed: webhook targets on private or loopback addresses are refused."""
    settings = make_settings(server_urls, allow_private_targets=False)
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as c:
        yield c


@dataclass(frozen=True)
class Org:
    b1_service: str
    b2_service: str
    b1_secretary: str
    m1a_member: str
    m2a_member: str


async def issue_key(client: TestClient[Any, Any], body: dict[str, Any], token: str | None = None) -> str:
    created = await post(client, "/v1/api-keys", body, token=token)
    assert created["role"] == body["role"]
    token_value = created["token"]
    assert isinstance(token_value, str) and token_value.startswith("ntf_")
    return token_value


@pytest.fixture
async def org(client: TestClient[Any, Any]) -> Org:
    await put(client, "/v1/units/c", {"name": "Committee"})
    for branch in ("b1", "b2"):
        await put(client, f"/v1/units/{branch}", {"name": f"Branch {branch}", "parent_id": "c"})
        for g in ("a", "b"):
            group = f"g{branch[1]}{g}"
            await put(client, f"/v1/units/{group}", {"name": f"Group {group}", "parent_id": branch})
            await put(client, f"/v1/members/m{branch[1]}{g}", {"name": f"Officer {group}", "units": [group]})
    return Org(
        b1_service=await issue_key(client, {"name": "b1 app", "role": "service", "unit_id": "b1"}),
        b2_service=await issue_key(client, {"name": "b2 app", "role": "service", "unit_id": "b2"}),
        b1_secretary=await issue_key(client, {"name": "b1 desk", "role": "secretary", "unit_id": "b1"}),
        m1a_member=await issue_key(client, {"name": "m1a phone", "role": "member", "member_id": "m1a"}),
        m2a_member=await issue_key(client, {"name": "m2a phone", "role": "member", "member_id": "m2a"}),
    )
