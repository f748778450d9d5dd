"""tests/conftest.py ``reset_state``: every test starts from the database TRUNCATE ... RESTART
IDENTITY CASCADE leaves, planner statistics included (a fresh deployment's), whatever the test
before it wrote."""

from __future__ import annotations

import json

import asyncpg

from notifier.settings import Settings
from tests.conftest import reset_state

GROW = "INSERT INTO units (id, name) SELECT 'u' || g, 'U' FROM generate_series(1, $1::int) g"


async def _stats(db: asyncpg.Connection) -> tuple[int, float]:
    row = await db.fetchrow("SELECT relpages, reltuples FROM pg_class WHERE oid = 'units'::regclass")
    assert row is not None
    return int(row["relpages"]), float(row["reltuples"])


async def _estimate(db: asyncpg.Connection) -> int:
    plan = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) SELECT * FROM units"))
    return int(plan[0]["Plan"]["Plan Rows"])


async def test_a_reset_leaves_a_small_table_as_truncate_does_for_the_planner(
    settings: Settings, db: asyncpg.Connection
) -> None:
    # the test before: a few rows, analysed (a fixture's seed, a plan test's ANALYZE)
    await db.execute(GROW, 3)
    await db.execute("ANALYZE units")
    await db.execute("TRUNCATE units RESTART IDENTITY CASCADE")
    await db.execute(GROW, 5000)  # the next test grows the table (no ANALYZE in between)
    truncated = (
        await _stats(db),
        await _estimate(db),
    )
    await reset_state(settings, db)
    # the same, reset by reset_state instead
    await db.execute(GROW, 3)
    await db.execute("ANALYZE units")
    await reset_state(settings, db)
    stats = await _stats(db)
    await db.execute(GROW, 5000)
    assert await db.fetchval("SELECT count(*) FROM units") == 5000
    # TRUNCATE: never analysed (reltuples -1), the estimate follows the table's growth
    assert (stats, await _estimate(db)) == (
        (0, -1.0),
        truncated[1],
    ), f"after TRUNCATE: {truncated[0]}, estimate {truncated[1]}"


SEQUENCES = """
SELECT q.seqrelid::regclass::text AS name, pg_sequence_last_value(q.seqrelid) AS last
FROM pg_sequence q ORDER BY 1"""


async def test_a_reset_restarts_every_sequence_truncate_restarts(
    settings: Settings, db: asyncpg.Connection
) -> None:
    names = [r["name"] for r in await db.fetch(SEQUENCES)]
    for name in names:
        await db.execute(f"SELECT nextval('{name}')")
    await reset_state(settings, db)
    after_reset = {r["name"]: r["last"] for r in await db.fetch(SEQUENCES)}
    for name in names:
        await db.execute(f"SELECT nextval('{name}')")
    from tests.conftest import TABLES

    await db.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    after_truncate = {r["name"]: r["last"] for r in await db.fetch(SEQUENCES)}
    assert after_reset == after_truncate
