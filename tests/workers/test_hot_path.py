"""The delivery write-back finds its rows by key, whatever the planner's statistics say.

A worker's write-backs -- the statements and everything their triggers run -- may not scan all
of ``recipients`` or ``deliveries`` (pg_stat_xact_user_tables counts every sequential scan of
the transaction). Such scans made each 500-row batch cost in proportion to the whole table (a
cached generic plan, and joins against the batch's arrays planned as hashed sequential scans).
The batches run on a worker session (``WORKER_SESSION``) after an ANALYZE, and more than five
times, so cached generic plans would be in use."""

from __future__ import annotations

import asyncpg

from benchmarks.fanout.org import create_org
from notifier.db import deliveries, notices, reports
from notifier.db import fanout as fanout_db
from notifier.db.deliveries import Written
from notifier.db.pool import WORKER_SESSION, Connection, create_pool
from notifier.settings import Settings

MEMBERS = 6000
BATCH = 100


async def _seq_scans(conn: Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE relname IN ('recipients', 'deliveries')"
    )
    return {r["relname"]: int(r["seq_scan"]) for r in rows}


async def test_the_write_back_never_scans_the_whole_tables(
    db: asyncpg.Connection, settings: Settings
) -> None:
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "hp", MEMBERS, "http://127.0.0.1:9/hook")

        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            ids = []
            for _ in range(2):  # an older notice: the tables hold more than this notice's rows
                row = await notices.insert(
                    conn,
                    kind="ding",
                    title="t",
                    body="b",
                    audience={"units": [root]},
                    channels=["webhook"],
                    scope_unit_id=None,
                    created_by=None,
                )
                ids.append(str(row["id"]))
                async with conn.transaction():
                    got = await fanout_db.fanout_chunk(
                        conn, ids[-1], [root], [], None, MEMBERS, ["webhook"], [True], [False]
                    )
                assert got["n"] == MEMBERS

            await conn.execute("VACUUM (ANALYZE) deliveries, recipients")
            written = 0
            scans = {"recipients": 0, "deliveries": 0}
            # One transaction around the batches (each write-back in its savepoint, as in the
            # worker's own transaction), so that pg_stat_xact_user_tables counts every scan.
            async with conn.transaction():
                for _ in range(8):
                    rows = await conn.fetch(deliveries.CLAIM, ids[-1], "webhook", BATCH, 60.0)
                    claimed = [(int(r["id"]), int(r["attempts"])) for r in rows]
                    assert len(claimed) == BATCH
                    before = await _seq_scans(conn)
                    async with conn.transaction():
                        changed = await deliveries.record(
                            conn,
                            [Written(i, attempt, "delivered", None, 0.0, None) for i, attempt in claimed],
                        )
                        await reports.take_pending(conn, "webhook", [])
                    after = await _seq_scans(conn)
                    for table in scans:
                        scans[table] += after[table] - before[table]
                    written += len(changed)
            assert written == 8 * BATCH
            # The counters moved with the rows (the triggers ran), by primary key.
            counts = await conn.fetchrow(
                "SELECT sum(delivered) AS delivered, sum(queued) AS queued FROM notice_counts "
                "WHERE notice_id = $1",
                ids[-1],
            )
            assert counts is not None and counts["delivered"] == written
            assert counts["queued"] == MEMBERS - written
            assert scans == {"recipients": 0, "deliveries": 0}
    finally:
        await pool.close()
