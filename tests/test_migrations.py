from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg

from notifier.db.migrations import migrate, migration_files
from notifier.settings import Settings


async def test_applying_twice_is_a_no_op(settings: Settings, db: asyncpg.Connection) -> None:
    # The session already migrated; a second run applies nothing and changes nothing.
    assert await migrate(settings.database_url) == []
    recorded = [
        r["version"] for r in await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    ]
    assert recorded == [p.stem for p in migration_files()]


async def test_a_fresh_database_gets_every_migration(settings: Settings, db: asyncpg.Connection) -> None:
    await db.execute("DROP DATABASE IF EXISTS notifier_migrate_test")
    await db.execute("CREATE DATABASE notifier_migrate_test")
    url = settings.database_url.rsplit("/", 1)[0] + "/notifier_migrate_test"
    try:
        assert await migrate(url) == [p.stem for p in migration_files()]
        assert await migrate(url) == []
    finally:
        await db.execute("DROP DATABASE notifier_migrate_test WITH (FORCE)")


async def test_0010_backfills_the_unit_counters_and_reach_of_earlier_notices(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Notices fanned out before the per-unit counters existed get them (from the rows, with
    today's memberships) and are listed and visible where they reached."""
    await db.execute("DROP DATABASE IF EXISTS notifier_backfill_test")
    await db.execute("CREATE DATABASE notifier_backfill_test")
    url = settings.database_url.rsplit("/", 1)[0] + "/notifier_backfill_test"
    earlier = tmp_path / "schemas"
    earlier.mkdir()
    for path in migration_files():
        if path.stem < "0010":
            shutil.copy(path, earlier / path.name)
    try:
        await migrate(url, earlier)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO units (id, name, parent_id) VALUES ('c', 'C', NULL), ('b1', 'B1', 'c'), "
                "('b2', 'B2', 'c'), ('g1', 'G1', 'b1')"
            )
            await conn.execute("INSERT INTO members (id, name) VALUES ('m1', 'M'), ('m2', 'M'), ('m3', 'M')")
            await conn.execute(
                "INSERT INTO member_units VALUES ('m1', 'g1'), ('m1', 'b1'), ('m2', 'b2'), ('m3', 'b2')"
            )
            nid = await conn.fetchval(
                "INSERT INTO notices (kind, title, body, audience, channels, scope_unit_id, state) "
                "VALUES ('ding', 't', 'b', '{}', '{inapp}', 'b2', 'active') RETURNING id"
            )
            await conn.execute(
                "INSERT INTO recipients (notice_id, member_id, dstatus, read_at, created_at) "
                "VALUES ($1, 'm1', 'delivered', now() + interval '3 minutes', now()), "
                "($1, 'm2', 'failed', NULL, now()), "
                "($1, 'm3', 'delivered', now() + interval '2 hours', now())",
                nid,
            )
            assert await migrate(url) == [p.stem for p in migration_files() if p.stem >= "0010"]
            rows = await conn.fetch(
                "SELECT unit_id, direct, recipients, delivered, failed, read, read_5m, read_later "
                "FROM notice_unit_counts WHERE notice_id = $1 ORDER BY unit_id, direct",
                nid,
            )
            assert [tuple(r) for r in rows] == [
                ("b1", False, 1, 1, 0, 1, 1, 0),  # m1 once, though in b1 and in g1 below it
                ("b1", True, 1, 1, 0, 1, 1, 0),
                ("b2", False, 2, 1, 1, 1, 0, 1),
                ("b2", True, 2, 1, 1, 1, 0, 1),
                ("c", False, 3, 2, 1, 2, 1, 1),
                ("g1", False, 1, 1, 0, 1, 1, 0),
                ("g1", True, 1, 1, 0, 1, 1, 0),
            ]
            reach = await conn.fetch("SELECT unit_id FROM notice_reach WHERE notice_id = $1 ORDER BY 1", nid)
            assert [r["unit_id"] for r in reach] == ["b1", "b2", "c", "g1"]
        finally:
            await conn.close()
    finally:
        await db.execute("DROP DATABASE notifier_backfill_test WITH (FORCE)")
