"""What ``notifier doctor`` asks PostgreSQL: the server's own clock, the engine clock's offset
(tests move it; a deployment never should), and which migrations are recorded."""

from __future__ import annotations

from notifier.db.pool import Connection, Record

CLOCKS = """
SELECT extract(epoch FROM clock_timestamp()) AS server_epoch,
       extract(epoch FROM notifier_now() - now()) AS engine_offset,
       current_setting('server_version') AS version"""
CLOCKS_BEFORE_MIGRATIONS = """
SELECT extract(epoch FROM clock_timestamp()) AS server_epoch, 0::float8 AS engine_offset,
       current_setting('server_version') AS version"""
HAS_MIGRATIONS = "SELECT to_regclass('schema_migrations') IS NOT NULL"
APPLIED = "SELECT version FROM schema_migrations"
HAS_ENGINE_CLOCK = "SELECT to_regproc('notifier_now') IS NOT NULL"


async def clocks(conn: Connection) -> Record:
    engine = await conn.fetchval(HAS_ENGINE_CLOCK)
    row = await conn.fetchrow(CLOCKS if engine else CLOCKS_BEFORE_MIGRATIONS)
    assert row is not None
    return row


async def applied_migrations(conn: Connection) -> set[str] | None:
    """The recorded versions; None when nothing was ever migrated."""
    if not await conn.fetchval(HAS_MIGRATIONS):
        return None
    return {r["version"] for r in await conn.fetch(APPLIED)}
