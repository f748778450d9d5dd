"""Unit settings on PUT /v1/units/{id} (secretaries, time zone, lesson times, quiet hours, default
policy) and members' quiet hours. PUT replaces: what is left out is cleared.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.api.conftest import Org, problem, snapshot
from tests.conftest import auth
from tests.helpers import get, post, put

SETTINGS: dict[str, Any] = {
    "timezone": "Asia/Urumqi",
    "lesson_time": "07:30",
    "lesson_reminder_time": "20:00",
    "quiet_hours": {"start": "22:00", "end": "07:00"},
    "default_policy": "ding-standard",
}
CLEARED: dict[str, Any] = {
    "secretaries": [],
    "timezone": None,
    "lesson_time": None,
    "lesson_reminder_time": None,
    "quiet_hours": None,
    "default_policy": None,
}


@pytest.fixture(autouse=True)
async def ding_standard(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    """The global policy SETTINGS names: a unit's default_policy must resolve."""
    policy = {"name": "ding-standard", "steps": [{"after": "PT5M", "remind": ["webhook"]}]}
    await post(client, "/v1/escalation-policies", policy)


def _settings(unit: dict[str, Any]) -> dict[str, Any]:
    return {k: unit[k] for k in CLEARED}


async def _secretaries(db: asyncpg.Connection, unit_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT member_id FROM unit_secretaries WHERE unit_id = $1 ORDER BY member_id", unit_id
    )
    return [r["member_id"] for r in rows]


async def test_settings_are_stored_and_shown_everywhere(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/members/s1", {"name": "Secretary", "units": ["b1"]})
    await put(client, "/v1/members/s2", {"name": "Deputy", "units": ["b1", "g1a"]})
    body = {"name": "Branch b1", "parent_id": "c", "secretaries": ["s2", "s1"], **SETTINGS}
    resp = await client.put("/v1/units/b1", json=body, headers=auth())
    assert resp.status == 200, await resp.text()
    saved = await resp.json()
    expected = {"secretaries": ["s1", "s2"], **SETTINGS}
    assert _settings(saved) == expected
    assert _settings(await get(client, "/v1/units/b1")) == expected
    assert _settings(await get(client, "/v1/units/b1", token=org.b1_secretary)) == expected
    listed = {u["id"]: u for u in (await get(client, "/v1/units"))["items"]}
    assert _settings(listed["b1"]) == expected
    assert _settings(listed["b2"]) == CLEARED
    row = await db.fetchrow(
        "SELECT timezone, lesson_time::text AS lt, lesson_reminder_time::text AS lrt, "
        "quiet_start::text AS qs, quiet_end::text AS qe, default_policy FROM units WHERE id = 'b1'"
    )
    assert row is not None
    assert dict(row) == {
        "timezone": "Asia/Urumqi",
        "lt": "07:30:00",
        "lrt": "20:00:00",
        "qs": "22:00:00",
        "qe": "07:00:00",
        "default_policy": "ding-standard",
    }
    assert await _secretaries(db, "b1") == ["s1", "s2"]


async def test_put_replaces_and_old_callers_keep_working(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """Callers that send only name and parent_id still work; PUT replaces, so settings clear."""
    await put(client, "/v1/members/s1", {"name": "Secretary", "units": ["b1"]})
    await put(client, "/v1/units/b1", {"name": "B1", "parent_id": "c", "secretaries": ["s1"], **SETTINGS})
    plain = await put(client, "/v1/units/b1", {"name": "B1 renamed", "parent_id": "c"})
    assert (plain["name"], plain["parent_id"]) == ("B1 renamed", "c")
    assert _settings(plain) == CLEARED
    assert await _secretaries(db, "b1") == []
    assert await db.fetchval("SELECT timezone FROM units WHERE id = 'b1'") is None
    created = await put(client, "/v1/units/new", {"name": "New", "parent_id": "b1"})
    assert _settings(created) == CLEARED


async def test_secretaries_set_is_replaced(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    for m in ("s1", "s2", "s3"):
        await put(client, f"/v1/members/{m}", {"name": m, "units": ["g1a"]})
    await put(client, "/v1/units/g1a", {"name": "G", "parent_id": "b1", "secretaries": ["s1", "s2"]})
    await put(client, "/v1/units/g1b", {"name": "G", "parent_id": "b1", "secretaries": []})
    assert await _secretaries(db, "g1a") == ["s1", "s2"]
    saved = await put(client, "/v1/units/g1a", {"name": "G", "parent_id": "b1", "secretaries": ["s3", "s2"]})
    assert saved["secretaries"] == ["s2", "s3"]
    assert await _secretaries(db, "g1a") == ["s2", "s3"]


async def test_secretaries_must_be_members_of_the_unit_itself(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/members/s1", {"name": "Secretary", "units": ["b1"]})
    await put(client, "/v1/units/b1", {"name": "B1", "parent_id": "c", "secretaries": ["s1"]})
    before = await snapshot(db)
    # m1a is a member of g1a (below b1), m2a of another branch, nope of nothing.
    body = {"name": "B1", "parent_id": "c", "secretaries": ["s1", "m1a", "m2a", "nope", "s1"]}
    resp = await client.put("/v1/units/b1", json=body, headers=auth())
    await problem(
        resp,
        422,
        [
            {"field": "secretaries[1]", "message": "must be a member of this unit"},
            {"field": "secretaries[2]", "message": "must be a member of this unit"},
            {"field": "secretaries[3]", "message": "must be a member of this unit"},
            {"field": "secretaries[4]", "message": "duplicate member id"},
        ],
    )
    # A unit being created has no members yet.
    resp = await client.put(
        "/v1/units/new", json={"name": "New", "parent_id": "b1", "secretaries": ["s1"]}, headers=auth()
    )
    await problem(resp, 422, [{"field": "secretaries[0]", "message": "must be a member of this unit"}])
    # A branch key cannot name a member outside its units either, even one it cannot see.
    resp = await client.put(
        "/v1/units/g1a",
        json={"name": "G", "parent_id": "b1", "secretaries": ["m1a", "m2a"]},
        headers=auth(org.b1_service),
    )
    await problem(resp, 422, [{"field": "secretaries[1]", "message": "must be a member of this unit"}])
    assert await snapshot(db) == before
    saved = await put(
        client,
        "/v1/units/g1a",
        {"name": "G", "parent_id": "b1", "secretaries": ["m1a"]},
        token=org.b1_service,
    )
    assert saved["secretaries"] == ["m1a"]


async def test_leaving_a_unit_ends_being_its_secretary(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/members/s1", {"name": "Secretary", "units": ["b1", "g1a"]})
    await put(client, "/v1/units/b1", {"name": "B1", "parent_id": "c", "secretaries": ["s1"]})
    await put(client, "/v1/units/g1a", {"name": "G", "parent_id": "b1", "secretaries": ["s1", "m1a"]})
    await put(client, "/v1/members/s1", {"name": "Secretary", "units": ["g1a"]})
    assert await _secretaries(db, "b1") == []
    assert await _secretaries(db, "g1a") == ["m1a", "s1"]
    await post(
        client, "/v1/members:batch", {"members": [{"id": "m1a", "name": "M", "units": ["g1b"]}]}, status=200
    )
    assert await _secretaries(db, "g1a") == ["s1"]


async def test_roles_and_scope_for_settings(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    before = await snapshot(db)
    body = {"name": "G", "parent_id": "b1", **SETTINGS}
    for token in (org.b1_secretary, org.m1a_member):
        resp = await client.put("/v1/units/g1a", json=body, headers=auth(token))
        await problem(resp, 403)
    resp = await client.put("/v1/units/g2a", json={**body, "parent_id": "b2"}, headers=auth(org.b1_service))
    await problem(resp, 404)
    assert await snapshot(db) == before
    saved = await put(client, "/v1/units/g1a", body, token=org.b1_service)
    assert _settings(saved) == {"secretaries": [], **SETTINGS}
    # A key may set its own unit's settings (the parent outside its reach is left unchanged).
    own = await put(
        client, "/v1/units/b1", {"name": "B1", "parent_id": "c", **SETTINGS}, token=org.b1_service
    )
    assert own["timezone"] == "Asia/Urumqi"


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (
            {"quiet_hours": {"start": "22:00"}},
            [{"field": "quiet_hours.end", "message": "Field required"}],
        ),
        (
            {"quiet_hours": {"end": "07:00"}},
            [{"field": "quiet_hours.start", "message": "Field required"}],
        ),
        (
            {"quiet_hours": {"start": "22:00", "end": "22:00"}},
            [{"field": "quiet_hours", "message": "Value error, start and end must differ"}],
        ),
        (
            {"quiet_hours": {"start": "24:00", "end": "7:00"}},
            [
                {
                    "field": "quiet_hours.start",
                    "message": "Value error, must be a local time HH:MM such as 08:00",
                },
                {
                    "field": "quiet_hours.end",
                    "message": "Value error, must be a local time HH:MM such as 08:00",
                },
            ],
        ),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "days": "weekdays"}},
            [{"field": "quiet_hours.days", "message": "unknown field"}],
        ),
        (
            {"quiet_hours": "22:00-07:00"},
            [
                {
                    "field": "quiet_hours",
                    "message": "Input should be a valid dictionary or instance of QuietHours",
                }
            ],
        ),
        (
            {"lesson_time": "8am", "lesson_reminder_time": 2000},
            [
                {"field": "lesson_time", "message": "Value error, must be a local time HH:MM such as 08:00"},
                {
                    "field": "lesson_reminder_time",
                    "message": "Value error, must be a local time HH:MM such as 08:00",
                },
            ],
        ),
        (
            {"lesson_time": "08:00:00"},
            [{"field": "lesson_time", "message": "Value error, must be a local time HH:MM such as 08:00"}],
        ),
        (
            {"timezone": "Mars/Olympus_Mons"},
            [
                {
                    "field": "timezone",
                    "message": "Value error, must be an IANA time zone such as Asia/Shanghai",
                }
            ],
        ),
        (
            {"default_policy": ""},
            [{"field": "default_policy", "message": "String should have at least 1 character"}],
        ),
        (
            {"secretaries": "m1a"},
            [{"field": "secretaries", "message": "Input should be a valid list"}],
        ),
    ],
)
async def test_bad_settings_name_the_field_and_store_nothing(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    org: Org,
    fields: dict[str, Any],
    errors: list[dict[str, str]],
) -> None:
    await put(client, "/v1/units/g1a", {"name": "G", "parent_id": "b1", **SETTINGS})
    before = await snapshot(db)
    resp = await client.put("/v1/units/g1a", json={"name": "G", "parent_id": "b1", **fields}, headers=auth())
    await problem(resp, 422, errors)
    assert await snapshot(db) == before


async def test_quiet_hours_may_wrap_midnight_or_not(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    for quiet in ({"start": "22:00", "end": "07:00"}, {"start": "12:00", "end": "13:30"}):
        saved = await put(client, "/v1/units/g1a", {"name": "G", "parent_id": "b1", "quiet_hours": quiet})
        assert saved["quiet_hours"] == quiet


# --- members' quiet hours -------------------------------------------------------------------------


async def test_member_quiet_hours_on_put_and_batch(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    quiet = {"start": "23:00", "end": "06:30"}
    saved = await put(client, "/v1/members/m1a", {"name": "M", "units": ["g1a"], "quiet_hours": quiet})
    assert saved["quiet_hours"] == quiet
    assert (await get(client, "/v1/members/m1a", token=org.b1_service))["quiet_hours"] == quiet
    row = await db.fetchrow(
        "SELECT quiet_start::text AS s, quiet_end::text AS e FROM members WHERE id = 'm1a'"
    )
    assert row is not None
    assert (row["s"], row["e"]) == ("23:00:00", "06:30:00")
    batch = {
        "members": [
            {"id": "n1", "name": "N1", "units": ["g1a"], "quiet_hours": {"start": "21:00", "end": "08:00"}},
            {"id": "n2", "name": "N2", "units": ["g1a"]},
            {"id": "m1a", "name": "M", "units": ["g1a"]},
        ]
    }
    assert await post(client, "/v1/members:batch", batch, status=200) == {"created": 2, "updated": 1}
    assert (await get(client, "/v1/members/n1"))["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    assert (await get(client, "/v1/members/n2"))["quiet_hours"] is None
    # PUT replaces: the batch left m1a's quiet hours out, so they are cleared.
    assert (await get(client, "/v1/members/m1a"))["quiet_hours"] is None


async def test_bad_member_quiet_hours_store_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    before = await snapshot(db)
    resp = await client.put(
        "/v1/members/m1a",
        json={"name": "M", "units": ["g1a"], "quiet_hours": {"start": "06:00", "end": "06:00"}},
        headers=auth(),
    )
    await problem(resp, 422, [{"field": "quiet_hours", "message": "Value error, start and end must differ"}])
    batch = {
        "members": [
            {"id": "n1", "name": "N1", "units": ["g1a"], "quiet_hours": {"start": "21:00", "end": "08:00"}},
            {"id": "n2", "name": "N2", "units": ["g1a"], "quiet_hours": {"start": "21:00"}},
        ]
    }
    resp = await client.post("/v1/members:batch", json=batch, headers=auth())
    await problem(resp, 422, [{"field": "members[1].quiet_hours.end", "message": "Field required"}])
    assert await snapshot(db) == before
