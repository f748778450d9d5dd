"""escalation_policies, and the rule that resolves a policy name for a unit.

A name resolves to the unit's own policy first, then to a global one (made by an admin, no
unit). The send, ``PUT /v1/units`` (a unit's ``default_policy``) and the guard against deleting
or renaming a policy a unit still names all use that one rule (``RESOLVE``)."""

from __future__ import annotations

from notifier.db.pool import Connection, Pool, Record

COLUMNS = "id, unit_id, name, steps, repeat, created_at, updated_at"
INSERT = f"""
INSERT INTO escalation_policies (unit_id, name, steps, repeat) VALUES ($1, $2, $3, $4)
RETURNING {COLUMNS}"""
UPDATE = f"""
UPDATE escalation_policies SET name = $2, steps = $3, repeat = $4, updated_at = (SELECT notifier_now())
WHERE id = $1 RETURNING {COLUMNS}"""
GET = f"SELECT {COLUMNS} FROM escalation_policies WHERE id = $1"
# Held until commit: a unit naming this policy cannot commit meanwhile (see RESOLVE_FOR_SHARE).
GET_FOR_UPDATE = GET + " FOR UPDATE"
DELETE = "DELETE FROM escalation_policies WHERE id = $1 RETURNING id"
# The one lookup rule: the unit's own policy, else a global one. $2 NULL: global only.
RESOLVE = f"""
SELECT {COLUMNS} FROM escalation_policies
WHERE name = $1 AND (unit_id IS NOT DISTINCT FROM $2 OR unit_id IS NULL)
ORDER BY unit_id IS NULL LIMIT 1"""
# The same, and the policy row stays as it is until commit (a delete or rename waits for us).
RESOLVE_FOR_SHARE = f"""
SELECT {COLUMNS} FROM escalation_policies
WHERE name = $1 AND (unit_id IS NOT DISTINCT FROM $2 OR unit_id IS NULL)
ORDER BY unit_id IS NULL LIMIT 1 FOR SHARE"""
LIST = f"""
SELECT {COLUMNS} FROM escalation_policies
WHERE ($1::text[] IS NULL OR unit_id = ANY($1::text[]) OR unit_id IS NULL)
ORDER BY name, unit_id NULLS FIRST"""
UNIT_DEFAULT = "SELECT default_policy FROM units WHERE id = $1"
# Units whose default_policy resolves to the policy ($1 name, $2 owner) and would dangle without
# it: the owner itself when no global policy of that name takes over, or (a global policy) every
# unit naming it that has no policy of its own by that name.
REFERENCING_UNITS = """
SELECT u.id FROM units u
WHERE u.default_policy = $1
  AND CASE WHEN $2::text IS NULL
           THEN NOT EXISTS (SELECT 1 FROM escalation_policies p WHERE p.unit_id = u.id AND p.name = $1)
           ELSE u.id = $2 AND NOT EXISTS (
               SELECT 1 FROM escalation_policies p WHERE p.unit_id IS NULL AND p.name = $1)
      END
ORDER BY u.id"""


async def insert(conn: Connection, unit_id: str | None, name: str, steps: object, repeat: int) -> Record:
    row = await conn.fetchrow(INSERT, unit_id, name, steps, repeat)
    assert row is not None
    return row


async def update(conn: Connection, policy_id: str, name: str, steps: object, repeat: int) -> Record:
    row = await conn.fetchrow(UPDATE, policy_id, name, steps, repeat)
    assert row is not None
    return row


async def get(conn: Connection | Pool, policy_id: str, *, for_update: bool = False) -> Record | None:
    return await conn.fetchrow(GET_FOR_UPDATE if for_update else GET, policy_id)


async def delete(conn: Connection, policy_id: str) -> None:
    await conn.execute(DELETE, policy_id)


async def resolve(
    conn: Connection, name: str, unit_id: str | None, *, for_share: bool = False
) -> Record | None:
    """The policy ``name`` means for ``unit_id`` (None: an admin, global policies only)."""
    return await conn.fetchrow(RESOLVE_FOR_SHARE if for_share else RESOLVE, name, unit_id)


async def list_visible(conn: Connection, reach: list[str] | None) -> list[Record]:
    """Policies of the units in ``reach`` and every global one (``reach`` None: all)."""
    return list(await conn.fetch(LIST, reach))


async def unit_default(conn: Connection, unit_id: str) -> str | None:
    name: str | None = await conn.fetchval(UNIT_DEFAULT, unit_id)
    return name


async def referencing_units(conn: Connection, name: str, owner: str | None) -> list[str]:
    """Units that would be left naming a missing policy if this one went away or was renamed."""
    return [r["id"] for r in await conn.fetch(REFERENCING_UNITS, name, owner)]
