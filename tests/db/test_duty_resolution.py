"""The set-based resolution the escalation engine calls: who is on duty for each unit, and who the
secretaries are, each from the nearest ancestor-or-self unit that has anyone. A three-level tree::

    c ── b1 ── g1, g3
     └── b2 ── g2
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest

from notifier.db import duty
from tests.conftest import advance_clock

HOUR = timedelta(hours=1)
TREE = [("c", None), ("b1", "c"), ("b2", "c"), ("g1", "b1"), ("g3", "b1"), ("g2", "b2")]
UNITS = [u for u, _ in TREE]


@pytest.fixture
async def now(db: asyncpg.Connection) -> datetime:
    for unit, parent in TREE:
        await db.execute("INSERT INTO units (id, name, parent_id) VALUES ($1, $1, $2)", unit, parent)
    await db.execute(
        "INSERT INTO members (id, name) SELECT id, 'Officer ' || id FROM unnest($1::text[]) AS id",
        ["a", "b", "c1", "c2", "d", "s"],
    )
    # A shift counts while its member belongs to the roster's unit or below (PUT /duty's rule).
    await db.execute(
        "INSERT INTO member_units (member_id, unit_id) SELECT * FROM unnest($1::text[], $2::text[])",
        ["a", "b", "c1", "c2", "d", "s"],
        ["g1", "b1", "c", "c", "b2", "c"],
    )
    value = await db.fetchval("SELECT notifier_now()")
    assert isinstance(value, datetime)
    return value


async def _shift(db: asyncpg.Connection, unit: str, member: str, start: datetime, end: datetime) -> None:
    await db.execute(
        "INSERT INTO duty_shifts (unit_id, member_id, during) VALUES ($1, $2, tstzrange($3, $4))",
        unit,
        member,
        start,
        end,
    )


async def test_on_duty_nearest_unit_with_anyone_on_duty(db: asyncpg.Connection, now: datetime) -> None:
    await _shift(db, "g1", "a", now + HOUR, now + 2 * HOUR)
    await _shift(db, "b1", "b", now - HOUR, now + 3 * HOUR)
    await _shift(db, "c", "c1", now - HOUR, now + 10 * HOUR)
    await _shift(db, "c", "c2", now + 5 * HOUR, now + 10 * HOUR)
    await _shift(db, "b2", "d", now + 20 * HOUR, now + 30 * HOUR)  # not yet

    at_now = await duty.on_duty_for_units(db, [*UNITS, "nope"], None)
    assert at_now == {
        "c": ["c1"],
        "b1": ["b"],
        "b2": ["c1"],  # its own shift has not begun: the parent answers
        "g1": ["b"],  # parent
        "g3": ["b"],
        "g2": ["c1"],  # grandparent
        "nope": [],
    }
    assert await duty.on_duty_for_units(db, ["g1", "g2"], now + HOUR) == {"g1": ["a"], "g2": ["c1"]}
    # Start inclusive, end exclusive.
    assert await duty.on_duty_for_units(db, ["g1"], now + 2 * HOUR) == {"g1": ["b"]}
    # Several on duty at once, found through the grandparent.
    assert await duty.on_duty_for_units(db, ["g1", "c"], now + 6 * HOUR) == {
        "g1": ["c1", "c2"],
        "c": ["c1", "c2"],
    }
    assert await duty.on_duty_for_units(db, ["g2"], now + 21 * HOUR) == {"g2": ["d"]}
    # Nobody anywhere up the tree.
    assert await duty.on_duty_for_units(db, ["g1", "g2", "c"], now + 12 * HOUR) == {
        "g1": [],
        "g2": [],
        "c": [],
    }
    assert await duty.on_duty_for_units(db, [], None) == {}


async def test_on_duty_defaults_to_the_engine_clock(db: asyncpg.Connection, now: datetime) -> None:
    await _shift(db, "g1", "a", now + HOUR, now + 2 * HOUR)
    await _shift(db, "c", "c1", now - HOUR, now + 3 * HOUR)
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": ["c1"]}
    await advance_clock(db, 1.5 * 3600)
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": ["a"]}
    await advance_clock(db, 3600)
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": ["c1"]}
    await advance_clock(db, 3600)
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": []}


async def test_on_duty_walk_can_stop_at_a_root(db: asyncpg.Connection, now: datetime) -> None:
    await _shift(db, "c", "c1", now - HOUR, now + HOUR)
    found = await duty.on_duty(db, ["g1", "b1"], now, stop_at="b1")
    assert {u: (f.unit_id, [r["member_id"] for r in f.shifts]) for u, f in found.items()} == {
        "g1": (None, []),
        "b1": (None, []),
    }
    await _shift(db, "b1", "b", now - HOUR, now + HOUR)
    found = await duty.on_duty(db, ["g1"], now, stop_at="b1")
    assert (found["g1"].unit_id, [r["member_id"] for r in found["g1"].shifts]) == ("b1", ["b"])
    assert found["g1"].at == now


async def test_secretaries_of_the_nearest_unit_with_any(db: asyncpg.Connection, now: datetime) -> None:
    async def secretaries(unit: str, members: list[str]) -> None:
        await db.execute("DELETE FROM unit_secretaries WHERE unit_id = $1", unit)
        await db.execute(
            "INSERT INTO unit_secretaries (unit_id, member_id) SELECT $1, unnest($2::text[])", unit, members
        )

    assert await duty.secretaries_for_units(db, ["g1", "c"]) == {"g1": [], "c": []}
    await secretaries("c", ["s"])
    await secretaries("b1", ["b", "a"])
    await secretaries("g3", ["d"])
    assert await duty.secretaries_for_units(db, [*UNITS, "nope"]) == {
        "c": ["s"],
        "b1": ["a", "b"],
        "b2": ["s"],
        "g1": ["a", "b"],  # parent
        "g3": ["d"],  # itself
        "g2": ["s"],  # grandparent
        "nope": [],
    }
    await secretaries("c", [])
    assert await duty.secretaries_for_units(db, ["g2", "g1"]) == {"g2": [], "g1": ["a", "b"]}


async def test_the_exclusion_constraint_is_the_guarantee(db: asyncpg.Connection, now: datetime) -> None:
    """Even without the API's own check, overlapping shifts of one member never reach the table:
    the constraint refuses them, the roster stays as it was and the caller's transaction lives on."""
    await _shift(db, "b1", "a", now, now + HOUR)
    shifts = [
        duty.Shift("a", now, now + 2 * HOUR),
        duty.Shift("b", now, now + 2 * HOUR),
        duty.Shift("a", now + HOUR, now + 3 * HOUR),
        duty.Shift("a", now + 2 * HOUR, now + 4 * HOUR),
    ]
    async with db.transaction():
        with pytest.raises(duty.OverlappingShifts) as refused:
            await duty.replace_roster(db, "b1", shifts)
        assert refused.value.pairs == [(2, 0), (3, 2)]
        rows = await db.fetch("SELECT member_id, lower(during) AS s FROM duty_shifts WHERE unit_id = 'b1'")
        assert [(r["member_id"], r["s"]) for r in rows] == [("a", now)]
        await duty.replace_roster(db, "b1", [shifts[1], shifts[3]])
    assert [r["member_id"] for r in await duty.list_shifts(db, "b1", None, None)] == ["b", "a"]


async def test_a_member_who_left_the_unit_is_no_longer_on_duty(db: asyncpg.Connection, now: datetime) -> None:
    await _shift(db, "b1", "b", now - HOUR, now + HOUR)
    await _shift(db, "c", "c1", now - HOUR, now + HOUR)
    await db.execute("INSERT INTO member_units VALUES ('a', 'g3')")
    await _shift(db, "b1", "a", now - HOUR, now + HOUR)  # a belongs below b1 (g1, g3)
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": ["a", "b"]}
    # b leaves b1: their shift stays on the roster but no longer makes them on duty.
    await db.execute("DELETE FROM member_units WHERE member_id = 'b'")
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": ["a"]}
    # a moves from g1 to g3, still below b1: still on duty there.
    await db.execute("DELETE FROM member_units WHERE member_id = 'a' AND unit_id = 'g1'")
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": ["a"]}
    # a leaves b1's subtree for b2: nobody in b1 is on duty any more, so c answers.
    await db.execute("UPDATE member_units SET unit_id = 'b2' WHERE member_id = 'a'")
    assert await duty.on_duty_for_units(db, ["g1"]) == {"g1": ["c1"]}
    found = await duty.on_duty(db, ["g1"])
    assert found["g1"].unit_id == "c"
