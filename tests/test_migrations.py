from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from notifier.db.migrations import LOCK, LOCK_KEY, UNLOCK, MigrationFailed, migrate, migration_files
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
            # 0011: the report slots from those counters, the notice once in each unit it reached
            slots = await conn.fetch(
                "SELECT unit_id, kind, notices, recipients, read, read_5m, read_later FROM unit_report_slots "
                "ORDER BY unit_id"
            )
            assert [tuple(r) for r in slots] == [
                ("b1", "ding", 1, 1, 1, 1, 0),
                ("b2", "ding", 1, 2, 1, 0, 1),
                ("c", "ding", 1, 3, 2, 1, 1),
                ("g1", "ding", 1, 1, 1, 1, 0),
            ]
        finally:
            await conn.close()
    finally:
        await db.execute("DROP DATABASE notifier_backfill_test WITH (FORCE)")


@contextlib.asynccontextmanager
async def scratch_database(settings: Settings, db: asyncpg.Connection, name: str) -> AsyncIterator[str]:
    await db.execute(f"DROP DATABASE IF EXISTS {name}")
    await db.execute(f"CREATE DATABASE {name}")
    try:
        yield settings.database_url.rsplit("/", 1)[0] + "/" + name
    finally:
        await db.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _failing_set(directory: Path) -> Path:
    directory.mkdir()
    (directory / "0001_good.sql").write_text("CREATE TABLE good (id int PRIMARY KEY);")
    # Half of this file would apply (a table, a column) before the error; none of it may stay.
    (directory / "0002_bad.sql").write_text(
        "CREATE TABLE half (id int);\nALTER TABLE good ADD COLUMN extra int;\nSELECT no_such_function();"
    )
    (directory / "0003_after.sql").write_text("CREATE TABLE after_bad (id int);")
    return directory


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'good'"
        )
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    return (
        {r["tablename"] for r in rows}
        | {"good." + r["column_name"] for r in columns}
        | {"v:" + r["version"] for r in versions}
    )


async def test_a_failing_file_is_rolled_back_alone_and_named(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = _failing_set(tmp_path / "schemas")
    async with scratch_database(settings, db, "notifier_migrate_fail") as url:
        with pytest.raises(MigrationFailed) as failed:
            await migrate(url, directory)
        assert failed.value.path.name == "0002_bad.sql"
        assert "0002_bad.sql" in str(failed.value)
        assert failed.value.applied == ["0001_good"]
        # The good file stays applied; nothing of the bad one (nor anything after it) is left.
        assert await _tables(url) == {"schema_migrations", "good", "good.id", "v:0001_good"}
        # Fixed, the next run applies the rest.
        (directory / "0002_bad.sql").write_text("CREATE TABLE half (id int);")
        assert await migrate(url, directory) == ["0002_bad", "0003_after"]


async def test_the_cli_exits_non_zero_naming_the_file(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = _failing_set(tmp_path / "schemas")
    async with scratch_database(settings, db, "notifier_migrate_cli") as url:
        env = {**os.environ, "NOTIFIER_DATABASE_URL": url, "NOTIFIER_REDIS_URL": settings.redis_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "notifier",
            "migrate",
            "--dir",
            str(directory),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "0002_bad.sql" in err.decode()
    assert "applied: 0001_good" in out.decode()


async def test_two_migrators_at_once_apply_each_file_once(settings: Settings, db: asyncpg.Connection) -> None:
    async with scratch_database(settings, db, "notifier_migrate_race") as url:
        first, second = await asyncio.gather(migrate(url), migrate(url))
        everything = [p.stem for p in migration_files()]
        # One did all the work, the other waited for the lock and found nothing to do.
        assert sorted([first, second], key=len) == [[], everything]


async def test_a_second_migrator_waits_for_the_lock(settings: Settings, db: asyncpg.Connection) -> None:
    async with scratch_database(settings, db, "notifier_migrate_wait") as url:
        holder = await asyncpg.connect(url)
        try:
            await holder.execute(LOCK, LOCK_KEY)
            waiting = asyncio.ensure_future(migrate(url))
            # Wait (bounded) until the migrator is queued behind the lock, seen from pg_locks.
            for _ in range(200):
                queued = await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                if queued:
                    break
                await asyncio.sleep(0.05)
            assert queued == 1
            assert not waiting.done()
            assert await holder.fetchval("SELECT to_regclass('schema_migrations')") is None
            await holder.execute(UNLOCK, LOCK_KEY)
            assert await asyncio.wait_for(waiting, 60) == [p.stem for p in migration_files()]
        finally:
            await holder.close()
