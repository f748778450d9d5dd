"""Members: ids and phone numbers are exactly what their patterns say (no trailing newline), and
a member id belongs to the branch that created it first, even when two create it at once.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.settings import Settings
from tests.api.conftest import Org, problem, snapshot
from tests.conftest import auth, wait_until
from tests.helpers import get, put


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/members/m%0A", {"name": "M", "units": ["u"]}, "member_id"),
        ("/v1/units/u2%0A", {"name": "U2"}, "unit_id"),
        ("/v1/members/m", {"name": "M", "units": ["u"], "phone": "+8613800138000\n"}, "phone"),
        ("/v1/members/m", {"name": "M", "units": ["u"], "email": "officer@example.org\n"}, "email"),
        ("/v1/members/m", {"name": "M", "units": ["u\n"]}, "units[0]"),
    ],
)
async def test_a_trailing_newline_is_not_part_of_an_id_or_number(
    client: TestClient[Any, Any], db: asyncpg.Connection, path: str, body: dict[str, Any], field: str
) -> None:
    """Before: Python's "$" matched before a final newline, so "m\\n" became a member id and
    "+8613800138000\\n" a phone number."""
    await put(client, "/v1/units/u", {"name": "U"})
    before = await snapshot(db)
    resp = await client.put(path, json=body, headers=auth())
    problem_body = await problem(resp, 422)
    assert [e["field"] for e in problem_body["errors"]] == [field]
    assert await snapshot(db) == before


async def _waiting_on_locks(db: asyncpg.Connection) -> int:
    n = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    assert isinstance(n, int)
    return n


async def test_two_branches_creating_one_new_member_id_at_once(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org, settings: Settings
) -> None:
    """The first branch to create an id owns it; the second, even a moment later while the first
    has not committed yet, is refused exactly as it would be afterwards. Only an admin makes a
    member shared. Before: both succeeded, and b2 joined (and renamed) b1's new member.

    Determinism without sleeping: a lock on member_units holds b1's request just before it writes
    memberships (after its checks), b2's request is sent while b1's is held, and the lock is let go
    once both are waiting."""
    blocker = await asyncpg.connect(settings.database_url)
    held = blocker.transaction()
    await held.start()
    try:
        await blocker.execute("LOCK TABLE member_units IN EXCLUSIVE MODE")
        first = asyncio.create_task(
            client.put(
                "/v1/members/new", json={"name": "B1's", "units": ["g1a"]}, headers=auth(org.b1_service)
            )
        )
        await wait_until(lambda: _at_least(db, 1), within=20)
        second = asyncio.create_task(
            client.put(
                "/v1/members/new", json={"name": "B2's", "units": ["g2a"]}, headers=auth(org.b2_service)
            )
        )
        await wait_until(lambda: _at_least(db, 2), within=20)
    finally:
        await held.rollback()
        await blocker.close()
    resp1, resp2 = await first, await second
    assert resp1.status == 201, await resp1.text()
    await problem(resp2, 422, [{"field": "id", "message": "this member id is used outside your units"}])
    member = await get(client, "/v1/members/new")
    assert (member["name"], member["units"]) == ("B1's", ["g1a"])
    resp = await client.get("/v1/members/new", headers=auth(org.b2_service))
    await problem(resp, 404)


async def _at_least(db: asyncpg.Connection, n: int) -> bool:
    return await _waiting_on_locks(db) >= n
