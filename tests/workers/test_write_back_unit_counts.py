"""schemas/0041: after write-backs of mixed outcomes -- and a statement that moves
some rows inside the queued class and some out of it -- every unit's counters equal a recount of
the recipients' statuses over their unit paths (the path-grouped counting sums what the per-row
counting summed)."""

from __future__ import annotations

import asyncpg

from benchmarks.fanout.org import create_org
from notifier.db import deliveries
from notifier.db.deliveries import Written
from notifier.db.pool import WORKER_SESSION, create_pool
from notifier.settings import Settings
from tests.workers.test_hot_path_in_flight import BATCH, notice_to_all

STATUSES = ("queued", "sent", "delivered", "failed", "cancelled")
RECOUNT = """
SELECT u.unit_id, u.direct, {sums}
FROM recipients r CROSS JOIN LATERAL (
    SELECT unnest(r.units) AS unit_id, false AS direct UNION ALL SELECT unnest(r.direct_units), true) u
WHERE r.notice_id = $1 GROUP BY 1, 2 ORDER BY 1, 2"""
COUNTERS = """
SELECT unit_id, direct, {sums} FROM notice_unit_counts WHERE notice_id = $1
GROUP BY 1, 2 HAVING {nonzero} ORDER BY 1, 2"""


async def test_unit_counters_follow_mixed_write_backs(db: asyncpg.Connection, settings: Settings) -> None:
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "uc", 3000, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            notice_id = await notice_to_all(conn, root)
            outcomes = ["delivered", "failed", "sent", "queued"]
            for _ in range(3):
                rows = await conn.fetch(deliveries.CLAIM, notice_id, "webhook", BATCH, 60.0, 0)
                await deliveries.record(
                    conn,
                    [
                        Written(
                            r["id"], r["attempts"], outcomes[i % 4], None, 0.0 if i % 4 != 3 else 5.0, None
                        )
                        for i, r in enumerate(rows)
                    ],
                )
            # One statement: some rows stay in the queued class (queued -> sending), some leave it.
            await conn.execute(
                "UPDATE deliveries SET state = CASE WHEN id % 2 = 0 THEN 'sending' ELSE 'cancelled' END "
                "WHERE notice_id = $1 AND state = 'queued' AND id % 7 = 0",
                notice_id,
            )
            recount_sums = ", ".join(f"sum((r.dstatus = '{s}')::int)::bigint" for s in STATUSES)
            counter_sums = ", ".join(f"sum({s})::bigint" for s in STATUSES)
            nonzero = " OR ".join(f"sum({s}) <> 0" for s in STATUSES)
            recount = [tuple(r) for r in await conn.fetch(RECOUNT.format(sums=recount_sums), notice_id)]
            counters = [
                tuple(r)
                for r in await conn.fetch(COUNTERS.format(sums=counter_sums, nonzero=nonzero), notice_id)
            ]
            assert counters == recount
            assert len(recount) > 10
    finally:
        await pool.close()
