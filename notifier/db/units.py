"""units: the organisation tree. Subtree and ancestor walks are recursive CTEs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import Any

from notifier.db.pool import Connection, Record

# Serialises tree edits so two concurrent re-parentings cannot close a cycle together.
LOCK_TREE = "SELECT pg_advisory_xact_lock(727002)"

ANCESTORS_CTE = """
WITH RECURSIVE up AS (
    SELECT id, parent_id, 0 AS depth FROM units WHERE id = $1
    UNION ALL
    SELECT u.id, u.parent_id, up.depth + 1 FROM units u JOIN up ON u.id = up.parent_id WHERE up.depth < 1000
)"""

SUBTREE_CTE = """
WITH RECURSIVE sub AS (
    SELECT id, 0 AS depth FROM units WHERE id = ANY($1::text[])
    UNION
    SELECT u.id, sub.depth + 1 FROM units u JOIN sub ON u.parent_id = sub.id WHERE sub.depth < 1000
)"""

IS_ANCESTOR_OR_SELF = ANCESTORS_CTE + " SELECT EXISTS (SELECT 1 FROM up WHERE id = $2)"
# Every column a unit is shown with; the secretaries ride along as a sorted array.
UNIT = """
SELECT u.id, u.name, u.parent_id, u.timezone, u.lesson_time, u.lesson_reminder_time,
       u.quiet_start, u.quiet_end, u.default_policy, u.created_at, u.updated_at,
       ARRAY(SELECT s.member_id FROM unit_secretaries s WHERE s.unit_id = u.id ORDER BY s.member_id) AS secretaries
FROM units u"""
GET = UNIT + " WHERE u.id = $1"
EXISTING = "SELECT id FROM units WHERE id = ANY($1::text[])"
# PUT replaces the whole unit: settings not given are cleared.
UPSERT = """
INSERT INTO units (id, name, parent_id, timezone, lesson_time, lesson_reminder_time, quiet_start, quiet_end, default_policy)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, parent_id = excluded.parent_id,
    timezone = excluded.timezone, lesson_time = excluded.lesson_time,
    lesson_reminder_time = excluded.lesson_reminder_time, quiet_start = excluded.quiet_start,
    quiet_end = excluded.quiet_end, default_policy = excluded.default_policy, updated_at = (SELECT notifier_now())
RETURNING (xmax = 0) AS created"""
# Secretaries must be direct members of the unit; FOR SHARE holds those memberships until commit.
DIRECT_MEMBERS = """
SELECT member_id FROM member_units WHERE unit_id = $1 AND member_id = ANY($2::text[]) FOR SHARE"""
DROP_OTHER_SECRETARIES = "DELETE FROM unit_secretaries WHERE unit_id = $1 AND member_id <> ALL($2::text[])"
ADD_SECRETARIES = """
INSERT INTO unit_secretaries (unit_id, member_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING"""
CHILDREN = UNIT + " WHERE u.parent_id = $1 ORDER BY u.id"
LIST_SUBTREE = (
    SUBTREE_CTE
    + UNIT
    + """ JOIN sub ON sub.id = u.id
WHERE ($2::text IS NULL OR u.id > $2) ORDER BY u.id LIMIT $3"""
)
LIST_ALL = UNIT + " WHERE ($1::text IS NULL OR u.id > $1) ORDER BY u.id LIMIT $2"


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """What a unit sets for the units and members below it (None: inherit)."""

    timezone: str | None = None
    lesson_time: time | None = None
    lesson_reminder_time: time | None = None
    quiet_start: time | None = None
    quiet_end: time | None = None
    default_policy: str | None = None


async def get(conn: Connection, unit_id: str) -> Record | None:
    return await conn.fetchrow(GET, unit_id)


async def existing(conn: Connection, unit_ids: list[str]) -> set[str]:
    return {r["id"] for r in await conn.fetch(EXISTING, unit_ids)}


async def is_within(conn: Connection, unit_id: str, root_id: str) -> bool:
    """True when ``unit_id`` is ``root_id`` or below it."""
    return bool(await conn.fetchval(IS_ANCESTOR_OR_SELF, unit_id, root_id))


async def all_within(conn: Connection, unit_ids: list[str], root_id: str) -> set[str]:
    """The subset of ``unit_ids`` that lie in ``root_id``'s subtree."""
    rows = await conn.fetch(
        SUBTREE_CTE + " SELECT id FROM sub WHERE id = ANY($2::text[])", [root_id], unit_ids
    )
    return {r["id"] for r in rows}


async def subtree_ids(conn: Connection, root_id: str) -> list[str]:
    return [r["id"] for r in await conn.fetch(SUBTREE_CTE + " SELECT id FROM sub", [root_id])]


async def upsert(
    conn: Connection, unit_id: str, name: str, parent_id: str | None, settings: UnitSettings | None = None
) -> bool:
    """Create or replace a unit; True when it was created."""
    s = settings or UnitSettings()
    created = await conn.fetchval(
        UPSERT,
        unit_id,
        name,
        parent_id,
        s.timezone,
        s.lesson_time,
        s.lesson_reminder_time,
        s.quiet_start,
        s.quiet_end,
        s.default_policy,
    )
    return bool(created)


async def direct_members(conn: Connection, unit_id: str, member_ids: list[str]) -> set[str]:
    """The subset of ``member_ids`` that are members of ``unit_id`` itself (not of units below)."""
    return {r["member_id"] for r in await conn.fetch(DIRECT_MEMBERS, unit_id, member_ids)}


async def replace_secretaries(conn: Connection, unit_id: str, member_ids: list[str]) -> None:
    await conn.execute(DROP_OTHER_SECRETARIES, unit_id, member_ids)
    await conn.execute(ADD_SECRETARIES, unit_id, member_ids)


async def lock_tree(conn: Connection) -> None:
    await conn.execute(LOCK_TREE)


async def list_units(conn: Connection, root_id: str | None, after: str | None, limit: int) -> list[Record]:
    if root_id is None:
        return list(await conn.fetch(LIST_ALL, after, limit))
    return list(await conn.fetch(LIST_SUBTREE, [root_id], after, limit))


def as_dict(row: Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "parent_id": row["parent_id"],
        "secretaries": list(row["secretaries"]),
        "timezone": row["timezone"],
        "lesson_time": row["lesson_time"],
        "lesson_reminder_time": row["lesson_reminder_time"],
        "quiet_hours": quiet_hours(row["quiet_start"], row["quiet_end"]),
        "default_policy": row["default_policy"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def quiet_hours(start: time | None, end: time | None) -> dict[str, time] | None:
    return None if start is None or end is None else {"start": start, "end": end}
