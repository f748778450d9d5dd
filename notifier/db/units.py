"""units: the organisation tree, and the one place its walks are written.

``subtree`` walks down from a set of roots, ``ancestors`` walks up from a set of units; every
module that walks the tree (units, members, duty, lessons, quiet hours, recipients) builds its
statement from these two, so the tree means the same thing everywhere. Both stop after
``MAX_DEPTH`` steps, and ``PUT /v1/units`` refuses a tree deeper than that (``fits``), so a walk
never stops early on a real tree; the cap only bounds a walk over rows that somehow form a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import Any

from notifier.db.pool import Connection, Record

# The deepest a unit may lie below a root (a root is at depth 0).
MAX_DEPTH = 1000

# Serialises tree edits so two concurrent re-parentings cannot close a cycle together.
LOCK_TREE = "SELECT pg_advisory_xact_lock(727002)"


def subtree(roots: str) -> str:
    """The recursive CTE ``sub(id, depth)`` (put it after ``WITH RECURSIVE``): the units whose ids
    the ``text[]`` parameter ``roots`` (e.g. ``"$2"``) lists, and every unit below them, ``depth``
    steps down."""
    return f"""sub AS (
    SELECT id, 0 AS depth FROM units WHERE id = ANY({roots}::text[])
    UNION
    SELECT u.id, sub.depth + 1 FROM units u JOIN sub ON u.parent_id = sub.id WHERE sub.depth < {MAX_DEPTH}
)"""


def audience_members(members: str) -> str:
    """A notice's audience as a subquery yielding ``member_id``: the members of every unit in
    ``sub`` (the ``subtree`` CTE over the audience units) UNION the members the ``text[]`` parameter
    ``members`` names. The fan-out and the console's live recipient count both use it."""
    return f"""(
    SELECT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id
    UNION
    SELECT m.id FROM members m WHERE m.id = ANY({members}::text[])
)"""


def ancestors(starts: str, key: str, *, stop_at: str | None = None) -> str:
    """The recursive CTE ``up(<key>, id, parent_id, depth)`` (put it after ``WITH RECURSIVE``): for
    each row ``(key, unit_id)`` the query ``starts`` gives, that unit and every unit above it,
    ``depth`` steps up (0: the unit itself). With ``stop_at`` (an SQL expression naming a unit; NULL
    for none) the walk goes no higher than that unit."""
    stop = "" if stop_at is None else f" AND up.id IS DISTINCT FROM {stop_at}"
    return f"""up ({key}, id, parent_id, depth) AS (
    SELECT s.origin, u.id, u.parent_id, 0 FROM ({starts}) AS s (origin, unit_id) JOIN units u ON u.id = s.unit_id
    UNION ALL
    SELECT up.{key}, p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id
    WHERE up.depth < {MAX_DEPTH}{stop}
)"""


# The same walks as whole WITH clauses over $1: the ancestors of one unit, the subtree of a list.
ANCESTORS_CTE = "\nWITH RECURSIVE " + ancestors("SELECT $1::text, $1::text", "start")
SUBTREE_CTE = "\nWITH RECURSIVE " + subtree("$1")

IS_ANCESTOR_OR_SELF = ANCESTORS_CTE + " SELECT EXISTS (SELECT 1 FROM up WHERE id = $2)"
WITHIN = SUBTREE_CTE + " SELECT id FROM sub WHERE id = ANY($2::text[])"
SUBTREE_IDS = SUBTREE_CTE + " SELECT id FROM sub"
# The lowest unit at or above every unit of $1 (units that do not exist are left out): the
# nearest one whose ancestors-or-self walk every start reaches; none across organisations.
COMMON_ANCESTOR = (
    "\nWITH RECURSIVE "
    + ancestors("SELECT u, u FROM unnest($1::text[]) AS t (u)", "start")
    + """
SELECT id FROM up GROUP BY id HAVING count(DISTINCT start) = (SELECT count(DISTINCT start) FROM up)
ORDER BY min(depth), id LIMIT 1"""
)
# Whether unit $1 (and everything below it) still lies within MAX_DEPTH when hung below $2.
FITS = f"""
WITH RECURSIVE {ancestors("SELECT $2::text, $2::text", "start")}, {subtree("ARRAY[$1::text]")}
SELECT (SELECT max(depth) FROM up) + 1 + coalesce((SELECT max(depth) FROM sub), 0) <= {MAX_DEPTH}"""
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
    return {r["id"] for r in await conn.fetch(WITHIN, [root_id], unit_ids)}


async def common_ancestor(conn: Connection, unit_ids: list[str]) -> str | None:
    """The lowest unit that is, or lies above, every one of ``unit_ids`` (one unit: itself);
    None when they share none (different organisations) or none exists."""
    found = await conn.fetchval(COMMON_ANCESTOR, unit_ids)
    return None if found is None else str(found)


async def subtree_ids(conn: Connection, root_id: str) -> list[str]:
    return [r["id"] for r in await conn.fetch(SUBTREE_IDS, [root_id])]


async def fits(conn: Connection, unit_id: str, parent_id: str) -> bool:
    """False when hanging ``unit_id`` (with the units below it) below ``parent_id`` would put a unit
    deeper than ``MAX_DEPTH``."""
    return bool(await conn.fetchval(FITS, unit_id, parent_id))


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
