"""Quiet hours of a member in several units: the member's own setting wins; otherwise they are
quiet while inside the quiet hours of any of their units (found up the tree from each
membership), until the last of those ends -- never decided by which unit id sorts first."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest

from notifier.db.quiet import quiet_now

HOUR = timedelta(hours=1)


@pytest.fixture
async def local_now(db: asyncpg.Connection) -> datetime:
    await db.execute(
        "INSERT INTO units (id, name, parent_id) VALUES ('root', 'R', NULL), "
        "('a', 'A', 'root'), ('z', 'Z', 'root'), ('zz', 'ZZ', 'z')"
    )
    await db.execute("INSERT INTO members (id, name) VALUES ('m', 'M')")
    value = await db.fetchval("SELECT notifier_now() AT TIME ZONE 'Asia/Shanghai'")
    assert isinstance(value, datetime)
    return value


async def _quiet(db: asyncpg.Connection, table: str, row_id: str, start: datetime, end: datetime) -> None:
    assert table in ("units", "members")
    await db.execute(
        f"UPDATE {table} SET quiet_start = $2, quiet_end = $3 WHERE id = $1",  # noqa: S608 - fixed names
        row_id,
        start.time(),
        end.time(),
    )


@pytest.mark.parametrize("quiet_unit", ["a", "zz"])
async def test_a_member_in_two_units_is_quiet_in_either_units_hours(
    db: asyncpg.Connection, local_now: datetime, quiet_unit: str
) -> None:
    await db.execute("INSERT INTO member_units VALUES ('m', 'a'), ('m', 'zz')")
    await _quiet(db, "units", quiet_unit, local_now - HOUR, local_now + 2 * HOUR)
    ends = await quiet_now(db, ["m"])
    assert list(ends) == ["m"] and 2 * 3600 - 60 < ends["m"] <= 2 * 3600


async def test_inherited_hours_and_the_latest_end_of_those_in_force(
    db: asyncpg.Connection, local_now: datetime
) -> None:
    await db.execute("INSERT INTO member_units VALUES ('m', 'a'), ('m', 'zz')")
    await _quiet(db, "units", "a", local_now - HOUR, local_now + HOUR)
    await _quiet(db, "units", "z", local_now - HOUR, local_now + 3 * HOUR)  # zz inherits from z
    assert 3 * 3600 - 60 < (await quiet_now(db, ["m"]))["m"] <= 3 * 3600
    # The member's own hours win over every unit's.
    await _quiet(db, "members", "m", local_now + 4 * HOUR, local_now + 5 * HOUR)
    assert await quiet_now(db, ["m"]) == {}
