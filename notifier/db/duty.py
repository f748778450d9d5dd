"""duty_shifts and unit_secretaries: the roster, and who answers for a unit (on duty, secretary).

A shift covers ``[starts_at, ends_at)``: on duty from its start, off at its end. Who answers for a
unit is decided by walking up the tree: the nearest ancestor-or-self unit that has someone (on duty
at that moment, or as secretary) answers. Each resolution is one statement for any number of units.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from notifier.db.pool import Connection, Record
from notifier.db.units import SUBTREE_CTE, ancestors

# One roster replacement per unit at a time: two concurrent replacements would otherwise each
# delete the old rows and leave the union of both new rosters.
LOCK_ROSTER = "SELECT pg_advisory_xact_lock(727003, hashtext($1))"
DELETE_ROSTER = "DELETE FROM duty_shifts WHERE unit_id = $1"
INSERT_SHIFTS = """
INSERT INTO duty_shifts (unit_id, member_id, during)
SELECT $1, s.member_id, tstzrange(s.starts_at, s.ends_at)
FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[]) AS s(member_id, starts_at, ends_at)"""
# Pairs of submitted shifts (0-based indexes, later one first) that the exclusion constraint
# refuses: the same member, overlapping ranges, in PostgreSQL's own range semantics.
OVERLAPPING_INPUT = """
WITH s AS (
    SELECT i - 1 AS i, member_id, tstzrange(starts_at, ends_at) AS during
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS t(member_id, starts_at, ends_at, i)
)
SELECT b.i AS later, min(a.i) AS earlier
FROM s a JOIN s b ON a.member_id = b.member_id AND a.i < b.i AND a.during && b.during
GROUP BY b.i ORDER BY b.i"""

# Shifts of one unit that overlap [$2, $3) (NULL: unbounded), with the member's name.
LIST_SHIFTS = """
SELECT d.member_id, m.name, lower(d.during) AS starts_at, upper(d.during) AS ends_at
FROM duty_shifts d JOIN members m ON m.id = d.member_id
WHERE d.unit_id = $1 AND d.during && tstzrange($2::timestamptz, $3::timestamptz)
ORDER BY lower(d.during), d.member_id"""

# Members among $2 with a membership in the subtree of $1 (the roster's unit).
MEMBERS_WITHIN = (
    SUBTREE_CTE
    + """
SELECT DISTINCT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id
WHERE mu.member_id = ANY($2::text[])"""
)

# Each requested unit ($1) with its ancestors and their distance; the walk stops at $2 when given
# (a scoped caller's root: ancestors above it are outside the caller's reach).
_UP = "WITH RECURSIVE " + ancestors(
    "SELECT id, id FROM units WHERE id = ANY($1::text[])", "requested", stop_at="$2::text"
)

# For every requested unit, one row per member on duty at $3 (NULL: (SELECT notifier_now())) in the nearest
# ancestor-or-self unit with anyone on duty then; a unit with nobody up the tree gets one row with
# NULLs. ``at`` is the moment used. A shift counts only while its member still belongs to the
# roster's unit or a unit below it (the rule PUT /duty checks): leaving the unit ends the duty.
ON_DUTY = (
    _UP
    + """,
at AS (SELECT coalesce($3::timestamptz, (SELECT notifier_now())) AS t),
in_force AS (
    SELECT d.unit_id, d.member_id, d.during FROM duty_shifts d, at
    WHERE d.unit_id IN (SELECT id FROM up) AND d.during @> at.t
),
-- Every unit at or above each membership of the members holding those shifts.
belongs (member_id, id, parent_id, depth) AS (
    SELECT mu.member_id, u.id, u.parent_id, 0
    FROM member_units mu JOIN units u ON u.id = mu.unit_id
    WHERE mu.member_id IN (SELECT member_id FROM in_force)
    UNION
    SELECT b.member_id, p.id, p.parent_id, b.depth + 1
    FROM belongs b JOIN units p ON p.id = b.parent_id WHERE b.depth < 1000
),
shifts AS (
    SELECT f.* FROM in_force f
    WHERE EXISTS (SELECT 1 FROM belongs b WHERE b.member_id = f.member_id AND b.id = f.unit_id)
),
answering AS (
    SELECT DISTINCT ON (up.requested) up.requested, up.id AS unit_id
    FROM up
    WHERE EXISTS (SELECT 1 FROM shifts s WHERE s.unit_id = up.id)
    ORDER BY up.requested, up.depth
)
SELECT r.id AS requested_unit_id, a.unit_id, s.member_id, m.name,
       lower(s.during) AS starts_at, upper(s.during) AS ends_at, at.t AS at
FROM at
CROSS JOIN (SELECT DISTINCT unnest($1::text[]) AS id) r
LEFT JOIN answering a ON a.requested = r.id
LEFT JOIN shifts s ON s.unit_id = a.unit_id
LEFT JOIN members m ON m.id = s.member_id
ORDER BY r.id, s.member_id"""
)

# For every requested unit, the secretaries of the nearest ancestor-or-self unit that has any.
SECRETARIES = (
    _UP
    + """,
nearest AS (
    SELECT DISTINCT ON (up.requested) up.requested, up.id AS unit_id
    FROM up
    WHERE EXISTS (SELECT 1 FROM unit_secretaries s WHERE s.unit_id = up.id)
    ORDER BY up.requested, up.depth
)
SELECT n.requested, s.member_id
FROM nearest n JOIN unit_secretaries s ON s.unit_id = n.unit_id
ORDER BY n.requested, s.member_id"""
)


@dataclass(frozen=True, slots=True)
class Shift:
    member_id: str
    starts_at: datetime
    ends_at: datetime


class OverlappingShifts(Exception):
    """The exclusion constraint refused the roster: ``pairs`` are (later, earlier) input indexes."""

    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        super().__init__(f"overlapping shifts of the same member: {pairs}")
        self.pairs = pairs


@dataclass(frozen=True, slots=True)
class OnDuty:
    """Who answers for ``requested_unit_id`` at ``at``: ``unit_id`` is the unit whose roster
    answered (None: nobody on duty anywhere up the walk) and ``shifts`` the shifts in force."""

    requested_unit_id: str
    unit_id: str | None
    at: datetime
    shifts: list[Record]


async def replace_roster(conn: Connection, unit_id: str, shifts: list[Shift]) -> None:
    """Replace the unit's whole roster. Raises ``OverlappingShifts`` (nothing changed) when the
    exclusion constraint refuses the new shifts. Call inside a transaction."""
    await conn.execute(LOCK_ROSTER, unit_id)
    args = (
        [s.member_id for s in shifts],
        [s.starts_at for s in shifts],
        [s.ends_at for s in shifts],
    )
    try:
        async with conn.transaction():  # a savepoint: the caller's transaction survives a refusal
            await conn.execute(DELETE_ROSTER, unit_id)
            await conn.execute(INSERT_SHIFTS, unit_id, *args)
    except asyncpg.ExclusionViolationError:
        pairs = [(r["later"], r["earlier"]) for r in await conn.fetch(OVERLAPPING_INPUT, *args)]
        raise OverlappingShifts(pairs) from None


async def list_shifts(
    conn: Connection, unit_id: str, start: datetime | None, end: datetime | None
) -> list[Record]:
    return list(await conn.fetch(LIST_SHIFTS, unit_id, start, end))


async def members_within(conn: Connection, unit_id: str, member_ids: list[str]) -> set[str]:
    """The subset of ``member_ids`` that belong to ``unit_id`` or a unit below it."""
    return {r["member_id"] for r in await conn.fetch(MEMBERS_WITHIN, [unit_id], member_ids)}


async def on_duty(
    conn: Connection, unit_ids: list[str], at: datetime | None = None, *, stop_at: str | None = None
) -> dict[str, OnDuty]:
    """Who is on duty for each unit at ``at`` (None: the engine's now), walking up the tree to the
    nearest unit with anyone on duty, but never above ``stop_at`` when given."""
    out: dict[str, OnDuty] = {}
    for row in await conn.fetch(ON_DUTY, unit_ids, stop_at, at):
        requested = row["requested_unit_id"]
        entry = out.get(requested)
        if entry is None:
            entry = out[requested] = OnDuty(requested, row["unit_id"], row["at"], [])
        if row["member_id"] is not None:
            entry.shifts.append(row)
    return out


async def on_duty_for_units(
    conn: Connection, unit_ids: list[str], at: datetime | None = None
) -> dict[str, list[str]]:
    """For each unit: the member ids on duty at ``at`` (an aware datetime; None: (SELECT notifier_now())) in
    the nearest ancestor-or-self unit that has anyone on duty then; [] when nobody up the tree."""
    found = await on_duty(conn, unit_ids, at)
    return {u: [r["member_id"] for r in found[u].shifts] if u in found else [] for u in unit_ids}


async def secretaries_for_units(conn: Connection, unit_ids: list[str]) -> dict[str, list[str]]:
    """For each unit: the secretaries of the nearest ancestor-or-self unit that has any ([]: none)."""
    out: dict[str, list[str]] = {u: [] for u in unit_ids}
    for row in await conn.fetch(SECRETARIES, unit_ids, None):
        out[row["requested"]].append(row["member_id"])
    return out
