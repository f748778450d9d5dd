"""A delivery write-back takes the counter rows in the receipts' and the fan-out's order: the
units' first, then the notice's (tests/api/test_receipt_lock_order.py,
tests/workers/test_fanout_parts.py), both when its trigger counts in one statement (every
recipient rises: schemas/0033) and when it goes through set_recipient_status (a delivery falls:
schemas/0020, now 0039). In the reverse order a write-back and a batch of reads on the same
counter shard deadlocked.

The shard is pinned to 0, a second transaction holds the unit's counter row as a batch of reads
would, the write-back is let run until it waits for that row, and then that transaction takes
the notice's counter row: it must get it at once (the write-back holds none yet); in the
reverse order it waited for the write-back past its lock_timeout."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from notifier.workers.context import WorkerDeps
from tests.api.test_receipt_lock_order import PINNED, REAL
from tests.conftest import wait_until
from tests.workers.test_counters import violations
from tests.workers.test_delivery_layer import ScriptedChannel, make_members, make_notice
from tests.workers.test_fanout_parts import waiting_on_lock


@pytest.mark.parametrize(
    "state",
    [
        "delivered",  # rises: the trigger's one statement (0033)
        "cancelled",  # falls: recomputed under locks, set_recipient_status (0020 / 0039)
    ],
)
async def test_a_write_back_takes_the_units_counts_before_the_notices(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection, server_urls: tuple[str, str], state: str
) -> None:
    deps, _ = env
    await make_members(db, 3)
    nid = await make_notice(deps, db, ["scripted"])
    delivery = await db.fetchval(
        "SELECT id FROM deliveries WHERE notice_id = $1 AND member_id = 'm00000' AND state = 'queued'", nid
    )
    assert delivery is not None
    # The shard-0 counter rows exist (zeros), so no one inserts them (nor checks a foreign key).
    await db.execute(
        "INSERT INTO notice_unit_counts (notice_id, unit_id, direct, shard) VALUES ($1, 'u', false, 0)"
        " ON CONFLICT DO NOTHING",
        nid,
    )
    await db.execute(
        "INSERT INTO notice_counts (notice_id, shard) VALUES ($1, 0) ON CONFLICT DO NOTHING", nid
    )
    batch = await asyncpg.connect(server_urls[0])
    writer = await asyncpg.connect(server_urls[0])
    written: asyncio.Future[str] | None = None
    await db.execute(PINNED)
    try:
        tx = batch.transaction()
        await tx.start()
        await batch.execute("SET LOCAL lock_timeout = '300ms'")
        # as a batch of reads' u: the unit's counter row first
        await batch.execute(
            "UPDATE notice_unit_counts SET read = read WHERE notice_id = $1 AND unit_id = 'u' AND NOT direct"
            " AND shard = 0",
            nid,
        )
        written = asyncio.ensure_future(
            writer.execute("UPDATE deliveries SET state = $2 WHERE id = $1", delivery, state)
        )

        async def blocked() -> bool:
            if written.done():
                raise AssertionError(f"the write-back did not wait: {written.result()}")
            return await waiting_on_lock(db)

        await wait_until(blocked, within=10)
        # as a batch's k: the notice's counter row -- not held by the write-back
        await batch.execute("UPDATE notice_counts SET read = read WHERE notice_id = $1 AND shard = 0", nid)
        await tx.commit()
        assert await asyncio.wait_for(written, 10) == "UPDATE 1"
    finally:
        await db.execute(REAL)
        await batch.close()
        if written is not None and not written.done():
            written.cancel()
            await asyncio.gather(written, return_exceptions=True)
        await writer.close()
    status = "delivered" if state == "delivered" else "cancelled"
    assert (
        await db.fetchval("SELECT dstatus FROM recipients WHERE notice_id = $1 AND member_id = 'm00000'", nid)
        == status
    )
    assert await violations(db) == []
