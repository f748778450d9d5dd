"""A single read receipt takes the counter rows in the order the batch's statement takes them
(db/receipts.py MARK: its unreferenced CTEs run last to first -- the units' counts, then the
notice's), so a receipt and a batch that share a counter shard wait for each other instead of
deadlocking (the deadlock answered 500s under benchmarks.scale --targets 6).

The shard is pinned to 0 for the test (notice_count_shard() picks one per transaction), a second
transaction holds a unit's counter row as a batch would, the receipt is let run until it waits
for that row, and then that transaction takes the notice's counter row: it must get it at once
(the receipt holds none yet), where the reverse order made it wait for the receipt: a deadlock."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.conftest import Org
from tests.api.test_scoping import _active, _notice_by
from tests.conftest import wait_until
from tests.helpers import post
from tests.workers.test_counters import violations

PINNED = (
    "CREATE OR REPLACE FUNCTION notice_count_shard() RETURNS smallint LANGUAGE sql VOLATILE AS $$"
    " SELECT 0::smallint $$"
)
# schemas/0006's
REAL = (
    "CREATE OR REPLACE FUNCTION notice_count_shard() RETURNS smallint LANGUAGE sql VOLATILE AS $$"
    " SELECT (pg_current_xact_id()::text::bigint % 16)::smallint $$"
)


async def test_a_single_receipt_takes_the_units_counts_before_the_notices(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org, server_urls: tuple[str, str]
) -> None:
    nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await _active(client, nid)
    unit = await db.fetchval(
        "SELECT units[cardinality(units)] FROM recipients WHERE notice_id = $1::uuid AND member_id = 'm1b'",
        nid,
    )
    batch = await asyncpg.connect(server_urls[0])
    await db.execute(PINNED)
    try:
        tx = batch.transaction()
        await tx.start()
        await batch.execute("SET LOCAL lock_timeout = '300ms'")
        # as a batch's u: the unit's counter row first (read + 0: nothing changes)
        await batch.execute(
            "INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, read)"
            " VALUES ($1, $2, false, 0, 0)"
            " ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET read = k.read",
            nid,
            unit,
        )
        receipt = asyncio.ensure_future(
            post(client, f"/v1/notices/{nid}/receipts", {"member_id": "m1b", "type": "read"}, status=200)
        )

        async def receipt_waits() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%record_receipt%'"
                )
            )

        await wait_until(receipt_waits, within=10)
        # as a batch's k: the notice's counter row -- not held by the receipt (it would be in the
        # reverse order, and this would wait past lock_timeout)
        await batch.execute(
            "INSERT INTO notice_counts AS k (notice_id, shard, read) VALUES ($1, 0, 0)"
            " ON CONFLICT (notice_id, shard) DO UPDATE SET read = k.read",
            nid,
        )
        await tx.commit()
        out = await asyncio.wait_for(receipt, 10)
        assert out["recorded"] is True
    finally:
        await db.execute(REAL)
        await batch.close()
    assert await violations(db) == []
