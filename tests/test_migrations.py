from __future__ import annotations

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
