"""units: the organisation tree. Subtree and ancestor walks are recursive CTEs."""

from __future__ import annotations

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
GET = "SELECT id, name, parent_id, created_at, updated_at FROM units WHERE id = $1"
EXISTING = "SELECT id FROM units WHERE id = ANY($1::text[])"
UPSERT = """
INSERT INTO units (id, name, parent_id) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, parent_id = excluded.parent_id, updated_at = notifier_now()
RETURNING id, name, parent_id, created_at, updated_at, (xmax = 0) AS created"""
CHILDREN = "SELECT id, name, parent_id, created_at, updated_at FROM units WHERE parent_id = $1 ORDER BY id"
LIST_SUBTREE = (
    SUBTREE_CTE
    + """
SELECT u.id, u.name, u.parent_id, u.created_at, u.updated_at FROM units u JOIN sub ON sub.id = u.id
WHERE ($2::text IS NULL OR u.id > $2) ORDER BY u.id LIMIT $3"""
)
LIST_ALL = """
SELECT id, name, parent_id, created_at, updated_at FROM units
WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"""


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


async def upsert(conn: Connection, unit_id: str, name: str, parent_id: str | None) -> Record:
    row = await conn.fetchrow(UPSERT, unit_id, name, parent_id)
    assert row is not None
    return row


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
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
