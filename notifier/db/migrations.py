"""Apply the SQL files in ``schemas/`` in order, once each, recorded in ``schema_migrations``."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
# One migrator at a time, across processes.
LOCK = "SELECT pg_advisory_xact_lock(727001)"
APPLIED = "SELECT version FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (version) VALUES ($1)"


def migration_files(directory: Path = SCHEMAS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.name[:4].isdigit())


async def migrate(database_url: str, directory: Path = SCHEMAS_DIR) -> list[str]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    conn = await asyncpg.connect(database_url)
    applied_now: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute(LOCK)
            await conn.execute(CREATE_TABLE)
            done = {r["version"] for r in await conn.fetch(APPLIED)}
            for path in migration_files(directory):
                version = path.stem
                if version in done:
                    continue
                log.info("applying migration %s", version)
                await conn.execute(path.read_text())
                await conn.execute(RECORD, version)
                applied_now.append(version)
    finally:
        await conn.close()
    return applied_now
