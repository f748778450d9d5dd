"""Every walk over the tree is built from ``units.subtree`` / ``units.ancestors`` with one depth cap,
and ``PUT /v1/units`` keeps the tree within it. On a chain as deep as the cap allows, every walker
reaches the root: visibility, duty, secretaries, lessons and quiet hours resolve the same members
and units. (Quiet hours once stopped 50 levels up, the others 1,000.)"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.db import duty, lessons, members, quiet, units
from tests.api.conftest import problem, snapshot
from tests.conftest import auth
from tests.helpers import put

DEEPEST = units.MAX_DEPTH
# Members at depths around the old caps and at the bottom.
DEPTHS = [0, 1, 49, 50, 51, 52, 999, DEEPEST]


def unit(depth: int) -> str:
    return f"t{depth:04d}"


@pytest.fixture
async def chain(db: asyncpg.Connection) -> list[str]:
    """t0000 <- t0001 <- ... <- t1000, each unit the parent of the next; only the root sets anything.
    Member m<depth> belongs to the unit at that depth."""
    await db.execute(
        "INSERT INTO units (id, name, parent_id) "
        "SELECT 't' || lpad(i::text, 4, '0'), 'Level ' || i, "
        "       CASE WHEN i > 0 THEN 't' || lpad((i - 1)::text, 4, '0') END "
        "FROM generate_series(0, $1::int) AS i",
        DEEPEST,
    )
    ids = [f"m{d}" for d in DEPTHS]
    await db.execute("INSERT INTO members (id, name) SELECT unnest($1::text[]), 'Officer'", ids)
    await db.execute(
        "INSERT INTO member_units (member_id, unit_id) SELECT unnest($1::text[]), unnest($2::text[])",
        ids,
        [unit(d) for d in DEPTHS],
    )
    # The root: in quiet hours now (an hour either side of the engine's now, UTC), a lesson time.
    await db.execute(
        "UPDATE units SET timezone = 'UTC', lesson_time = '06:30',"
        " quiet_start = ((SELECT notifier_now()) AT TIME ZONE 'UTC' - interval '1 hour')::time,"
        " quiet_end = ((SELECT notifier_now()) AT TIME ZONE 'UTC' + interval '1 hour')::time"
        " WHERE id = $1",
        unit(0),
    )
    await db.execute("INSERT INTO unit_secretaries (unit_id, member_id) VALUES ($1, 'm0')", unit(0))
    await db.execute(
        "INSERT INTO duty_shifts (unit_id, member_id, during) "
        "VALUES ($1, 'm0', tstzrange((SELECT notifier_now()) - interval '1 hour', NULL))",
        unit(0),
    )
    return ids


async def test_every_walker_reaches_the_root_of_the_deepest_tree(
    db: asyncpg.Connection, chain: list[str]
) -> None:
    root = unit(0)
    placed = [unit(d) for d in DEPTHS]
    # Down: the subtree and everything visibility is built on.
    assert len(await units.subtree_ids(db, root)) == DEEPEST + 1
    assert await units.all_within(db, placed, root) == set(placed)
    assert all([await units.is_within(db, u, root) for u in placed])
    assert await members.visible(db, chain, root) == set(chain)
    assert await members.not_owned(db, chain, root) == set()
    assert await duty.members_within(db, root, chain) == set(chain)
    # Up: every unit inherits the root's duty officer, secretary, lesson time and quiet hours.
    assert await duty.on_duty_for_units(db, placed) == {u: ["m0"] for u in placed}
    assert await duty.secretaries_for_units(db, placed) == {u: ["m0"] for u in placed}
    assert set(await quiet.quiet_now(db, chain)) == set(chain)
    today = await db.fetchval("SELECT ((SELECT notifier_now()) AT TIME ZONE 'UTC')::date")
    await db.executemany(
        "INSERT INTO lessons (unit_id, day, title, body) VALUES ($1, $2, 'Lesson', 'Text')",
        [(u, today) for u in placed],
    )
    rows = [await lessons.get(db, u, today) for u in placed]
    at = datetime.combine(today, time(6, 30), tzinfo=UTC)
    assert {u: r["send_at"] if r else None for u, r in zip(placed, rows, strict=True)} == dict.fromkeys(
        placed, at
    )


async def test_put_refuses_a_tree_deeper_than_the_cap(
    client: TestClient[Any, Any], db: asyncpg.Connection, chain: list[str]
) -> None:
    message = f"a unit would lie more than {units.MAX_DEPTH} levels below the root"
    before = await snapshot(db)
    resp = await client.put("/v1/units/below", json={"name": "X", "parent_id": unit(DEEPEST)}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": message}])
    assert await snapshot(db) == before
    # A two-level subtree fits one level higher up only with its child: moving it counts its height.
    await put(client, "/v1/units/y", {"name": "Y"})
    await put(client, "/v1/units/z", {"name": "Z", "parent_id": "y"})
    before = await snapshot(db)
    resp = await client.put("/v1/units/y", json={"name": "Y", "parent_id": unit(DEEPEST - 1)}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": message}])
    assert await snapshot(db) == before
    await put(client, "/v1/units/y", {"name": "Y", "parent_id": unit(DEEPEST - 2)})
    assert await duty.on_duty_for_units(db, ["z"]) == {"z": ["m0"]}
    # The cycle check walks the whole depth: the root cannot move below the bottom.
    resp = await client.put(f"/v1/units/{unit(0)}", json={"name": "R", "parent_id": "z"}, headers=auth())
    await problem(
        resp,
        422,
        [{"field": "parent_id", "message": "would create a cycle: the parent lies below this unit"}],
    )
