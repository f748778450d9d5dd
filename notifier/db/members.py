"""members and member_units. Batch upserts are set-based (unnest), never a loop of inserts."""

from __future__ import annotations

from typing import Any

from notifier.db.pool import Connection, Record
from notifier.db.units import quiet_hours, subtree

# Upserting is three steps so that who owns an id is settled before anyone checks it: insert
# the new members (an insert of an id another transaction is inserting waits for it to commit),
# lock the existing ones, and only then check the caller's reach and update. Two branches
# creating the same new id at once: the second sees the first's member, with its units, and is
# refused as if it had come a moment later. Sorted, so two batches cannot deadlock.
COLUMNS = "id, name, phone, email, timezone, quiet_start, quiet_end"
ROWS = "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::time[], $7::time[])"
INSERT_NEW = f"""
INSERT INTO members ({COLUMNS})
SELECT * FROM {ROWS} AS r({COLUMNS}) ORDER BY r.id
ON CONFLICT (id) DO NOTHING
RETURNING id"""
LOCK = "SELECT id FROM members WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
UPDATE_MANY = f"""
UPDATE members m SET name = r.name, phone = r.phone, email = r.email, timezone = r.timezone,
    quiet_start = r.quiet_start, quiet_end = r.quiet_end, updated_at = (SELECT notifier_now())
FROM {ROWS} AS r({COLUMNS})
WHERE m.id = r.id"""

# Replace each listed member's memberships, but only among units in $4 (the caller's reach):
# memberships elsewhere belong to someone else and stay. A secretary must be a member of the unit, so
# leaving a unit also ends being its secretary.
DROP_OLD_MEMBERSHIPS = """
WITH dropped AS (
    DELETE FROM member_units mu
    WHERE mu.member_id = ANY($1::text[])
      AND ($4::text[] IS NULL OR mu.unit_id = ANY($4::text[]))
      AND NOT EXISTS (
          SELECT 1 FROM unnest($2::text[], $3::text[]) AS n(member_id, unit_id)
          WHERE n.member_id = mu.member_id AND n.unit_id = mu.unit_id)
    RETURNING mu.member_id, mu.unit_id
)
DELETE FROM unit_secretaries s USING dropped d WHERE s.member_id = d.member_id AND s.unit_id = d.unit_id"""
ADD_MEMBERSHIPS = """
INSERT INTO member_units (member_id, unit_id)
SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"""

GET = """
SELECT m.id, m.name, m.phone, m.email, m.timezone, m.quiet_start, m.quiet_end, m.created_at, m.updated_at,
       coalesce(array_agg(mu.unit_id ORDER BY mu.unit_id) FILTER (WHERE mu.unit_id IS NOT NULL), '{}') AS units
FROM members m LEFT JOIN member_units mu ON mu.member_id = m.id
WHERE m.id = $1 GROUP BY m.id"""

EXISTING = "SELECT id FROM members WHERE id = ANY($1::text[])"

# Members among $1 that have at least one membership inside the subtree of $2.
VISIBLE = (
    "WITH RECURSIVE "
    + subtree("$2")
    + """
SELECT DISTINCT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id
WHERE mu.member_id = ANY($1::text[])"""
)


def _columns(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [r["id"] for r in rows],
        [r["name"] for r in rows],
        [r.get("phone") for r in rows],
        [r.get("email") for r in rows],
        [r.get("timezone") for r in rows],
        [(r.get("quiet_hours") or {}).get("start") for r in rows],
        [(r.get("quiet_hours") or {}).get("end") for r in rows],
    ]


async def insert_new(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the members that do not exist yet; returns their ids. Ids that exist are left as
    they are (and those being inserted by another transaction are waited for)."""
    return {r["id"] for r in await conn.fetch(INSERT_NEW, *_columns(rows))}


async def lock(conn: Connection, member_ids: list[str]) -> None:
    """Hold these members until commit: their units cannot change under a check of them."""
    if member_ids:
        await conn.execute(LOCK, member_ids)


async def update_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(UPDATE_MANY, *_columns(rows))


async def replace_memberships(conn: Connection, rows: list[dict[str, Any]], reach: list[str] | None) -> None:
    """Give each member exactly its listed units, among those in ``reach`` (all when None)."""
    pair_members = [r["id"] for r in rows for _ in r["units"]]
    pair_units = [u for r in rows for u in r["units"]]
    await conn.execute(DROP_OLD_MEMBERSHIPS, [r["id"] for r in rows], pair_members, pair_units, reach)
    await conn.execute(ADD_MEMBERSHIPS, pair_members, pair_units)


async def get(conn: Connection, member_id: str) -> Record | None:
    return await conn.fetchrow(GET, member_id)


async def existing(conn: Connection, member_ids: list[str]) -> set[str]:
    return {r["id"] for r in await conn.fetch(EXISTING, member_ids)}


async def visible(conn: Connection, member_ids: list[str], root_id: str) -> set[str]:
    return {r["member_id"] for r in await conn.fetch(VISIBLE, member_ids, [root_id])}


def as_dict(row: Record, visible_units: set[str] | None = None) -> dict[str, Any]:
    units = [u for u in row["units"] if visible_units is None or u in visible_units]
    return {
        "id": row["id"],
        "name": row["name"],
        "units": units,
        "phone": row["phone"],
        "email": row["email"],
        "timezone": row["timezone"],
        "quiet_hours": quiet_hours(row["quiet_start"], row["quiet_end"]),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


# Members among $1 with a membership outside the subtree of $2: a unit-bound key may read them
# but not change them (their profile, contacts and keys are shared with someone else).
NOT_OWNED = (
    "WITH RECURSIVE "
    + subtree("$2")
    + """
SELECT DISTINCT mu.member_id FROM member_units mu
WHERE mu.member_id = ANY($1::text[]) AND mu.unit_id NOT IN (SELECT id FROM sub)"""
)


async def not_owned(conn: Connection, member_ids: list[str], root_id: str) -> set[str]:
    return {r["member_id"] for r in await conn.fetch(NOT_OWNED, member_ids, [root_id])}
