"""Apply the SQL files in ``schemas/`` in order, once each, recorded in ``schema_migrations``.

Each file runs in its own transaction together with its ``schema_migrations`` row: a file that
fails leaves the schema as the files before it left it (those stay applied) and raises
:class:`MigrationFailed` naming the file. A session-level advisory lock, held across the files,
keeps a second ``migrate`` (another process, another host) waiting until the first is done; it then
finds everything applied and applies nothing.
"""

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
# One migrator at a time, across processes; held by the session, released when it ends.
LOCK_KEY = 727001
LOCK = "SELECT pg_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"
APPLIED = "SELECT version FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (version) VALUES ($1)"


class MigrationFailed(Exception):
    """A migration file failed; its transaction was rolled back (earlier files stay applied)."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = path
        self.applied: list[str] = []
        super().__init__(f"migration {path.name} failed and was rolled back: {cause}")


def migration_files(directory: Path = SCHEMAS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.name[:4].isdigit())


async def migrate(database_url: str, directory: Path = SCHEMAS_DIR) -> list[str]:
    """Apply pending migrations; returns the versions applied now (empty when up to date).

    Raises :class:`MigrationFailed` (with ``.applied``: the files applied before it) when one fails.
    """
    conn = await asyncpg.connect(database_url)
    applied_now: list[str] = []
    try:
        await conn.execute(LOCK, LOCK_KEY)
        try:
            await conn.execute(CREATE_TABLE)
            done = {r["version"] for r in await conn.fetch(APPLIED)}
            for path in migration_files(directory):
                version = path.stem
                if version in done:
                    continue
                log.info("applying migration %s", version)
                try:
                    async with conn.transaction():
                        await conn.execute(path.read_text())
                        await conn.execute(RECORD, version)
                except (asyncpg.PostgresError, OSError) as exc:
                    failed = MigrationFailed(path, exc)
                    failed.applied = applied_now
                    raise failed from exc
                applied_now.append(version)
        finally:
            await conn.execute(UNLOCK, LOCK_KEY)
    finally:
        await conn.close()
    return applied_now
